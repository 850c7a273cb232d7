"""`deltaworld bench what=tokenizer|world|data|codec`: print speed/memory figures
(deltaworld.eval.bench_commands); conf/bench.yaml."""

import hydra
from omegaconf import DictConfig

from deltaworld.errors import user_errors
from deltaworld.eval.bench_commands import run_bench


@hydra.main(config_path="pkg://deltaworld.conf", config_name="bench", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run_bench(cfg.what)


if __name__ == "__main__":
    main()
