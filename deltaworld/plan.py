"""`deltaworld plan [experiment=plan_cpu] [world_ckpt=<pixel world export>] [start=... goal=...]`:
goal-reaching with an action world model, open or closed loop (deltaworld.eval.plan, handed
`deltaworld train`'s run_training for the models it trains: eval never trains a model itself);
conf/plan.yaml."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.eval.plan import run_plan
from deltaworld.tokenizer.fit import run_training


@hydra.main(config_path="pkg://deltaworld.conf", config_name="plan", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_plan(cfg, train_stage=run_training)


if __name__ == "__main__":
    main()
