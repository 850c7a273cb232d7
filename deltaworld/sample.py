"""`deltaworld sample world_ckpt=<world.safetensors> [video=<file>]`: M futures of one clip with
figures and statistics (deltaworld.eval.sample); conf/sample.yaml."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.eval.sample import run_sample


@hydra.main(config_path="pkg://deltaworld.conf", config_name="sample", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_sample(cfg)


if __name__ == "__main__":
    main()
