"""`deltaworld import-official tokenizer_ckpt=... [world_ckpt=...] [heads=[...]] out=...`: the reference
implementation's released checkpoints as this framework's exports (deltaworld.eval.import_official);
conf/import_official.yaml."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.eval.import_official import run_import_official


@hydra.main(config_path="pkg://deltaworld.conf", config_name="import_official", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_import_official(cfg)


if __name__ == "__main__":
    main()
