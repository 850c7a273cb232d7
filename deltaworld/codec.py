"""`deltaworld codec action=encode|decode|eval ...`: the pixel DeltaToken as a streaming video codec
on files (deltaworld.eval.codec_commands); conf/codec.yaml."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.eval.codec_commands import run_codec


@hydra.main(config_path="pkg://deltaworld.conf", config_name="codec", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_codec(cfg)


if __name__ == "__main__":
    main()
