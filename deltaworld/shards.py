"""`deltaworld shards input=<videos> output=<folder>`: pack videos into webdataset shards (resumable)."""

import json

import hydra
from omegaconf import DictConfig

from deltaworld.data.shards import PackSettings, pack_shards
from deltaworld.errors import user_errors


@hydra.main(config_path="pkg://deltaworld.conf", config_name="shards", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    settings = PackSettings(
        format=cfg.format,
        samples_per_shard=cfg.samples_per_shard,
        min_frames=cfg.min_frames,
        min_duration=cfg.min_duration,
        frame_fps=cfg.frame_fps,
        short_side=cfg.short_side,
        quality=cfg.quality,
        extensions=tuple(cfg.extensions),
    )
    manifest = pack_shards(cfg.input, cfg.output, settings, workers=cfg.workers)
    summary = {k: manifest[k] for k in ("num_shards", "num_samples", "bytes", "bytes_per_sample")}
    print(json.dumps({**summary, "bad_inputs": len(manifest["bad"]), "output": str(cfg.output)}))
    for bad in manifest["bad"]:
        print(f"skipped: {bad['reason']}")


if __name__ == "__main__":
    main()
