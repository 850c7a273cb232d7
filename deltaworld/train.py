"""`deltaworld train experiment=<preset> [overrides]`: fit one stage (tokenizer, world model, pixel
codec) from Hydra configs; `-m` sweeps. The logic is `deltaworld.tokenizer.fit.run_training`."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.tokenizer.fit import run_training


@hydra.main(config_path="pkg://deltaworld.conf", config_name="train", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_training(cfg)


if __name__ == "__main__":
    main()
