"""`deltaworld demo [device=cuda]`: the whole pipeline on synthetic labelled video, ending in a
report (deltaworld.eval.demo, handed `deltaworld train`'s run_training: eval never trains a model
itself); conf/demo.yaml."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.eval.demo import run_demo
from deltaworld.tokenizer.fit import run_training


@hydra.main(config_path="pkg://deltaworld.conf", config_name="demo", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_demo(cfg, train_stage=run_training)


if __name__ == "__main__":
    main()
