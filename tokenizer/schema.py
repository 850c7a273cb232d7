"""Model files are data: the schema of an export's metadata, and the one way a loader builds from it.

An export's metadata names its `kind` (KINDS) and `format_version`, and holds one config per model
it carries (`backbone`, `tokenizer`, `world`, `heads`). A loader never resolves a name it reads: each
config goes to the builder a fixed table in code gives for that field (a `Builder`; this room's are
below, worldmodel and eval keep theirs beside their loaders), after every argument is checked by
name and type against the builder's keyword signature. Exports of the previous format (no version;
Hydra configs with `_target_`) still load: a `_target_` is accepted only if it is one of the strings
the previous code wrote for that field, and then ignored, since the table already says what builds it.
"""

import inspect
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from deltaworld.tokenizer.backbone import build_backbone
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.diffusion import PatchDenoiser
from deltaworld.tokenizer.pixel import PixelDeltaToken

FORMAT_VERSION = 1
KINDS = ("tokenizer", "world", "heads", "pixel_tokenizer", "pixel_world")
HYDRA_KEYS = ("_target_", "_partial_")  # what a config in a file of the previous format may carry besides arguments
REEXPORT = "if the file is yours, export it again with the current code (which writes plain configs, no `_target_`)"


class SchemaError(ValueError):
    """A model file's metadata does not fit the schema; the message names the file, field and argument."""


@dataclass(frozen=True)
class Builder:
    """What builds one metadata field: `fn` (fixed in code), the arguments the loader supplies itself
    (never read from a file), the `_target_` strings exports of the previous format named it by, the
    keys (with type hints) each dict argument may hold, and the str arguments that must be plain
    names (timm resolves one with ':' or '/' on a model hub)."""

    fn: Callable[..., Any]
    supplied: tuple[str, ...] = ()
    legacy_targets: tuple[str, ...] = ()
    dict_keys: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plain_names: tuple[str, ...] = ()


def legacy(target: str) -> tuple[str, str]:
    """A `_target_` as the previous code wrote it: before and after the rooms moved under `deltaworld.`."""
    return target, f"deltaworld.{target}"


def keyword_hints(fn: Callable, exclude: Collection[str] = ()) -> dict[str, tuple[Any, bool]]:
    """{argument: (type hint, required)} of `fn`'s keyword arguments (a class: its `__init__`'s)."""
    hints = get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    return {
        p.name: (hints.get(p.name, object), p.default is p.empty)
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in exclude
    }


# timm architecture arguments an export's `backbone.arch` may set; all else (checkpoint_path,
# pretrained_cfg*, layer classes, ...) is refused, since the dict goes to `timm.create_model` as kwargs
ARCH_KEYS = {
    "depth": int,
    "embed_dim": int,
    "num_heads": int,
    "mlp_ratio": float,
    "patch_size": int,
    "qkv_bias": bool,
    "qk_norm": bool,
    "init_values": float | None,
    "class_token": bool,
    "no_embed_class": bool,
    "reg_tokens": int,
    "num_reg_tokens": int,
}
BACKBONE = Builder(
    build_backbone,
    legacy_targets=legacy("tokenizer.backbone.build_backbone"),
    dict_keys={"arch": ARCH_KEYS},
    plain_names=("name",),
)
DELTATOK = Builder(DeltaTok, supplied=("dim", "num_heads"), legacy_targets=legacy("tokenizer.deltatok.DeltaTok"))
PIXEL_TOKENIZER = Builder(
    PixelDeltaToken,
    legacy_targets=legacy("tokenizer.pixel.PixelDeltaToken"),
    dict_keys={"diffusion": {k: h for k, (h, _) in keyword_hints(PatchDenoiser, ("patch_dim", "token_dim")).items()}},
)


def plain_config(value: Any) -> Any:
    """`value` without Hydra's `_target_`/`_partial_` keys at any depth: what an export stores."""
    if isinstance(value, Mapping):
        return {k: plain_config(v) for k, v in value.items() if k not in HYDRA_KEYS}
    if isinstance(value, list | tuple):
        return [plain_config(v) for v in value]
    return value


def stamp(kind: str, metadata: dict) -> dict:
    """The metadata of a new export: `metadata` with plain configs, its kind and the format version."""
    if kind not in KINDS:
        raise ValueError(f"unknown export kind {kind!r}: one of {', '.join(KINDS)}")
    return {**plain_config(metadata), "kind": kind, "format_version": FORMAT_VERSION}


def _legacy_kind(meta: dict) -> str | None:
    """The kind of a previous-format export, from its fields (pixel ones already named theirs)."""
    return next((kind for kind in ("heads", "world", "tokenizer") if kind in meta), None)


def expect_kind(path: Any, meta: dict, kinds: Sequence[str], make: str) -> str:
    """The kind of the export at `path` if it is one of `kinds`; otherwise a one-line refusal naming
    the file, its kind and `make`, the command that writes the right one."""
    version = meta.get("format_version", 0)
    if type(version) is not int or not 0 <= version <= FORMAT_VERSION:
        raise SchemaError(f"{path}: format_version {version!r} is not one this code reads (0 to {FORMAT_VERSION})")
    kind = meta.get("kind") or (_legacy_kind(meta) if version == 0 else None)
    if kind not in kinds:
        found = f"is a {kind} export" if kind in KINDS else f"has no known kind ({kind!r})"
        raise SchemaError(f"{path} {found}, not a {' or '.join(kinds)} export; make one with `{make}`")
    return kind


def _name(hint: Any) -> str:
    if hint is type(None) or hint is None:
        return "None"
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_name(a) for a in get_args(hint))
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def _plain(value: Any) -> bool:
    """A JSON value of primitives, lists and string-keyed dicts (what json.loads gives)."""
    if isinstance(value, list):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, bool | int | float | str)


def matches(value: Any, hint: Any) -> bool:
    """Whether a value read from a file fits a type hint: None, bool (not int), int, float (int too),
    str, unions, dicts and lists/sequences/tuples (JSON lists) of those. Other types never come from a file."""
    origin, args = get_origin(hint) or hint, get_args(hint)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if hint is None or hint is type(None):
        return value is None
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint in (int, float):  # a JSON 4 is a fine float; a JSON true is no int
        return isinstance(value, int | hint) and not isinstance(value, bool)
    if origin in (dict, Mapping):
        if not isinstance(value, dict) or not _plain(value):
            return False
        return not args or all(matches(v, args[1]) for v in value.values())
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list) or not _plain(value):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(matches, value, args))
        return not args or all(matches(v, args[0]) for v in value)
    return False


def checked_field(path: Any, meta: dict, key: str, hint: Any) -> Any:
    """Top-level metadata field `key`, refused unless present and of type `hint`."""
    if key not in meta:
        raise SchemaError(f"{path}: metadata has no field '{key}'")
    _check_type(path, key, meta[key], hint)
    return meta[key]


def _check_type(path: Any, key: str, value: Any, hint: Any) -> None:
    if not matches(value, hint):
        raise SchemaError(f"{path}: metadata field '{key}' must be {_name(hint)}, got {_name(type(value))}")


def _check_arguments(path: Any, key: str, values: dict, hints: Mapping[str, tuple[Any, bool]], owner: str) -> None:
    for name, value in values.items():
        if name not in hints:
            raise SchemaError(
                f"{path}: metadata field '{key}.{name}' is not an argument {owner} takes from a file "
                f"({', '.join(hints)})"
            )
        _check_type(path, f"{key}.{name}", value, hints[name][0])
    if missing := [name for name, (_, required) in hints.items() if required and name not in values]:
        raise SchemaError(f"{path}: metadata field '{key}.{missing[0]}' is missing ({owner} requires it)")


def checked_config(path: Any, meta: dict, key: str, builder: Builder) -> dict:
    """The arguments metadata field `key` holds for `builder`, each checked by name and type (dict
    arguments key by key); a previous-format config may name its builder by a known `_target_`."""
    config = dict(checked_field(path, meta, key, dict))
    target = config.pop("_target_", None)
    if target is not None and target not in builder.legacy_targets:
        raise SchemaError(
            f"{path}: metadata field '{key}._target_' names {target!r}, not one this loader knows for '{key}' "
            f"({', '.join(builder.legacy_targets) or 'none'}); a file may not name code to run: {REEXPORT}"
        )
    if target is not None:
        config.pop("_partial_", None)
    owner = builder.fn.__name__
    _check_arguments(path, key, config, keyword_hints(builder.fn, builder.supplied), owner)
    for name, keys in builder.dict_keys.items():
        if isinstance(config.get(name), dict):
            _check_arguments(path, f"{key}.{name}", config[name], {k: (h, False) for k, h in keys.items()}, owner)
    for name in builder.plain_names:
        if any(c in config.get(name, "") for c in ":/"):
            got = config[name]
            raise SchemaError(f"{path}: metadata field '{key}.{name}' must be a plain model name, got {got!r}")
    return config
