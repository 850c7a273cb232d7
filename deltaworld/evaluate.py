"""`deltaworld eval data=<dataset> world_ckpt=... heads=...`: the dense forecasting benchmark
(deltaworld.eval.benchmark) on checkpoints; conf/eval.yaml."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.eval.benchmark import run_eval


@hydra.main(config_path="pkg://deltaworld.conf", config_name="eval", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_eval(cfg)


if __name__ == "__main__":
    main()
