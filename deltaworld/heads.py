"""`deltaworld heads data=<dataset> [backbone_from=<export>]`: train, score and save the linear
heads (deltaworld.eval.fit_heads); conf/heads.yaml."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.eval.fit_heads import run_heads


@hydra.main(config_path="pkg://deltaworld.conf", config_name="heads", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_heads(cfg)


if __name__ == "__main__":
    main()
