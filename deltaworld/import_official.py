"""`deltaworld import-official`: the reference implementation's released checkpoints -> this framework.

deltaworld import-official tokenizer=<deltatok-kinetics/pytorch_model.bin> \\
    world=<deltaworld-kinetics/pytorch_model.bin> \\
    heads=[<seg-head-vspw/pytorch_model.bin>,<depth-head-kitti/pytorch_model.bin>] out=<dir> \\
    [backbone.checkpoint=<DINOv3 file, timm or Hugging Face layout>] [other overrides of experiment=reference]

Writes into out/: tokenizer.safetensors (`load_tokenizer`, `tokenizer_ckpt=`), world.safetensors
(`load_world`, `deltaworld sample world_ckpt=`), heads_<dataset>.safetensors (`load_heads`) and
config.yaml (the composed reference architecture). `tokenizer=` and `out=` are required. A head's dataset
(vspw, cityscapes, kitti) is read from its path, or given as <dataset>:<file>. Any argument that is
not one of tokenizer/world/heads/out is a Hydra override of the `train` config with
`experiment=reference` (e.g. `experiment=reference_tiny`, `frame_size=448`).
"""

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from deltaworld.eval.heads import save_heads
from deltaworld.eval.official_heads import REFERENCE_HEADS, head_dataset, heads_from_official
from deltaworld.tokenizer.checkpoint import export_safetensors, load_weights
from deltaworld.tokenizer.module import TokenizerModule
from deltaworld.tokenizer.official import FROZEN_BACKBONE, deltatok_dims, match_state_dict
from deltaworld.tokenizer.training import parameter_digest
from deltaworld.worldmodel.checkpoint import export_world
from deltaworld.worldmodel.official import is_deterministic, load_official_world

log = logging.getLogger(__name__)
FILE_ARGS = ("tokenizer", "world", "heads", "out")


def overrides_used(overrides: Sequence[str]) -> list[str]:
    """The overrides with `experiment=reference` first unless they name another experiment."""
    overrides = list(overrides)
    return overrides if any(o.startswith("experiment=") for o in overrides) else ["experiment=reference", *overrides]


def reference_architecture(overrides: Sequence[str]) -> dict:
    """frame_size, backbone, tokenizer and world config of `experiment=reference` (or the experiment
    the overrides name), resolved, with a local backbone checkpoint made absolute."""
    with initialize_config_module(config_module="deltaworld.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides_used(overrides))
    arch = {"frame_size": cfg.frame_size}
    arch.update({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("backbone", "tokenizer", "world")})
    if arch["backbone"].get("checkpoint"):
        arch["backbone"]["checkpoint"] = str(Path(arch["backbone"]["checkpoint"]).resolve())
    return arch


def parse_heads(value: str | Sequence[str]) -> list[tuple[str, Path]]:
    """`[a,b]`, `a` or a list, each `<file>` or `<dataset>:<file>` -> (dataset, file) pairs."""
    items = [v for v in value.strip("[]").split(",") if v.strip()] if isinstance(value, str) else value
    pairs = []
    for item in items:
        name, sep, rest = item.strip().partition(":")
        pairs.append((name, Path(rest)) if sep and name in REFERENCE_HEADS else (head_dataset(item), Path(item.strip())))
    return pairs


def import_official(
    *,
    tokenizer: str | Path,
    out: str | Path,
    world: str | Path | None = None,
    heads: str | Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> dict[str, Path]:
    """Convert released reference files into this framework's exports under `out`; returns the paths
    written by kind ("tokenizer", "world", "heads_<dataset>", "config"). Every file is checked before
    anything is written, so a refused file leaves no partial import behind."""
    out = Path(out)
    arch = reference_architecture(overrides)

    tok_weights = load_weights(tokenizer)
    dim, num_heads = deltatok_dims(tok_weights, source=str(tokenizer))
    parsed_heads = parse_heads(heads)
    if arch["backbone"].get("checkpoint") or parsed_heads:
        # a local backbone is checked now (layout, then width), not at first use; heads record the
        # digest of the backbone they belong to, which `deltaworld eval` checks
        backbone = instantiate(arch["backbone"])
        if (backbone.dim, backbone.num_heads) != (dim, num_heads):
            raise ValueError(
                f"{tokenizer} is a DeltaTok for width {dim} with {num_heads} heads; the backbone "
                f"{arch['backbone']['name']} has width {backbone.dim} with {backbone.num_heads} heads"
            )
    deltatok = instantiate(arch["tokenizer"])(dim=dim, num_heads=num_heads)
    deltatok.load_state_dict(
        match_state_dict(tok_weights, deltatok.state_dict(), source=str(tokenizer), ignore=FROZEN_BACKBONE)
    )
    sources = {"tokenizer": str(Path(tokenizer).resolve())}
    model = None
    if world is not None:
        world_weights = load_weights(world)
        arch["world"]["deterministic"] = is_deterministic(world_weights)
        model = instantiate(arch["world"])(token_dim=deltatok.token_dim, tokens_per_frame=deltatok.num_tokens)
        load_official_world(model, world_weights, source=str(world))
        sources["world"] = str(Path(world).resolve())
    heads_by_dataset = {
        dataset: (heads_from_official(load_weights(path), dataset=dataset, in_dim=dim, source=str(path)), path)
        for dataset, path in parsed_heads
    }

    tok_meta = {**TokenizerModule.export_metadata(arch), "official": sources}
    written = {"tokenizer": export_safetensors(deltatok, out / "tokenizer.safetensors", tok_meta)}
    if model is not None:
        written["world"] = export_world(
            model, deltatok, out / "world.safetensors", tokenizer_metadata=tok_meta, world_config=arch["world"], space="delta"
        )
    for dataset, (module, path) in heads_by_dataset.items():
        metadata = {
            "dataset": dataset, "backbone": arch["backbone"], "backbone_digest": parameter_digest(backbone),
            "frame_size": arch["frame_size"], "official": str(path.resolve()),
        }
        written[f"heads_{dataset}"] = save_heads(module, out / f"heads_{dataset}.safetensors", metadata)
    written["config"] = out / "config.yaml"
    header = (
        "# Written by `deltaworld import-official`: the architecture of the imported files (also embedded\n"
        f"# in each export), the `train` config composed with {overrides_used(overrides)}\n"
    )
    written["config"].write_text(header + OmegaConf.to_yaml(arch))
    for kind, path in written.items():
        log.info("%s: %s", kind, path)
    return written


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """key=value arguments: the file arguments, and everything else as Hydra overrides."""
    files, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in FILE_ARGS:
            files[key] = value
        else:
            overrides.append(arg)
    return files, overrides


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    files, overrides = parse_args(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    if missing := [k for k in ("tokenizer", "out") if k not in files]:
        print(f"deltaworld import-official: missing {', '.join(f'{k}=' for k in missing)}\n{__doc__}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = import_official(**files, overrides=overrides)
    if "world" in written:
        print(f"next: deltaworld sample world_ckpt={written['world']} video=<clip.mp4>")


if __name__ == "__main__":
    main()
