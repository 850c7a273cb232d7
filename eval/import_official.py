"""Importing the reference implementation's released checkpoints (`deltaworld import-official`):
its DeltaTok, DeltaWorld predictor and linear heads become this framework's exports, each checked
against the reference architecture of the `train` config's `experiment=reference` (or another
experiment) before anything is written."""

from collections.abc import Sequence
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from deltaworld.eval.configs import compose_config
from deltaworld.eval.heads import save_heads
from deltaworld.eval.official_heads import REFERENCE_HEADS, head_dataset, heads_from_official
from deltaworld.tokenizer.checkpoint import atomic_write_text, export_safetensors, load_weights
from deltaworld.tokenizer.module import TokenizerModule
from deltaworld.tokenizer.official import FROZEN_BACKBONE, deltatok_dims, match_state_dict
from deltaworld.tokenizer.training import parameter_digest
from deltaworld.worldmodel.checkpoint import export_world
from deltaworld.worldmodel.official import is_deterministic, load_official_world


def overrides_used(overrides: Sequence[str]) -> list[str]:
    """The overrides with `experiment=reference` first unless they name another experiment."""
    overrides = list(overrides)
    return overrides if any(o.startswith("experiment=") for o in overrides) else ["experiment=reference", *overrides]


def architecture(cfg: DictConfig) -> dict:
    """frame_size, backbone, tokenizer and world config of a composed `train` config, resolved, with
    a local backbone checkpoint made absolute."""
    arch = {"frame_size": cfg.frame_size}
    arch.update({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("backbone", "tokenizer", "world")})
    if arch["backbone"].get("checkpoint"):
        arch["backbone"]["checkpoint"] = str(Path(arch["backbone"]["checkpoint"]).resolve())
    return arch


def reference_architecture(overrides: Sequence[str] = ()) -> dict:
    """The architecture of the `train` config with `experiment=reference` (or the experiment the
    overrides name) and the overrides."""
    return architecture(compose_config("train", overrides_used(overrides)))


def parse_heads(value: str | Sequence[str]) -> list[tuple[str, Path]]:
    """A file or a list of them, each `<file>` or `<dataset>:<file>` -> (dataset, file) pairs."""
    pairs = []
    for item in [value] if isinstance(value, str) else value:
        name, sep, rest = item.strip().partition(":")
        named = sep and name in REFERENCE_HEADS
        pairs.append((name, Path(rest)) if named else (head_dataset(item), Path(item.strip())))
    return pairs


def import_official(
    *,
    tokenizer: str | Path,
    out: str | Path,
    arch: dict,
    world: str | Path | None = None,
    heads: str | Sequence[str] = (),
) -> dict[str, Path]:
    """Convert released reference files, read into `arch` (`reference_architecture`), into this
    framework's exports under `out`; returns the paths written by kind ("tokenizer", "world",
    "heads_<dataset>", "config"). Every file is checked before anything is written, so a refused file
    leaves no partial import behind."""
    out = Path(out)

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
            model,
            deltatok,
            out / "world.safetensors",
            tokenizer_metadata=tok_meta,
            world_config=arch["world"],
            space="delta",
        )
    for dataset, (module, path) in heads_by_dataset.items():
        metadata = {
            "dataset": dataset,
            "backbone": arch["backbone"],
            "backbone_digest": parameter_digest(backbone),
            "frame_size": arch["frame_size"],
            "official": str(path.resolve()),
        }
        written[f"heads_{dataset}"] = save_heads(module, out / f"heads_{dataset}.safetensors", metadata)
    written["config"] = out / "config.yaml"
    header = "# Written by `deltaworld import-official`: the architecture of the imported files (in each export too)\n"
    atomic_write_text(written["config"], header + OmegaConf.to_yaml(arch))
    return written


def run_import_official(cfg: DictConfig) -> dict[str, Path]:
    """`deltaworld import-official` (conf/import_official.yaml: the `train` config, whose architecture
    the files are read into, plus the files); prints what was written."""
    if cfg.tokenizer_ckpt is None:
        raise ValueError("deltaworld import-official needs tokenizer_ckpt=<the released DeltaTok file>")
    written = import_official(
        tokenizer=cfg.tokenizer_ckpt, out=cfg.out, arch=architecture(cfg), world=cfg.world_ckpt, heads=cfg.heads
    )
    print("\n".join(f"{kind}: {path}" for kind, path in written.items()))
    if "world" in written:
        print(f"next: deltaworld sample world_ckpt={written['world']} video=<clip.mp4>")
    return written
