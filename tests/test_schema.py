"""Model files are data: every loader builds from a table in code and checks each value it reads.
Files naming code to run are refused with nothing run, wrong kinds and bad fields are refused naming
the file, field and argument, exports carry kind + format_version, and the previous format still loads."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file

from deltaworld.eval.heads import build_heads, heads_config, load_heads, save_heads
from deltaworld.tokenizer.backbone import build_backbone
from deltaworld.tokenizer.checkpoint import (
    atomic_save_safetensors,
    export_safetensors,
    load_tokenizer,
    read_metadata,
)
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.module import TokenizerModule
from deltaworld.tokenizer.pixel import PixelDeltaToken, load_pixel_tokenizer, to_unit
from deltaworld.tokenizer.pixel_module import PixelTokenizerModule
from deltaworld.tokenizer.schema import FORMAT_VERSION, SchemaError
from deltaworld.worldmodel.checkpoint import export_world, load_world, world_export
from deltaworld.worldmodel.deltaworld import DeltaWorld

from conftest import FRAME, compose_train, synthetic_batch

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* RANDOMLY INITIALISED")

# configs as `deltaworld train` resolves them (Hydra `_target_`s, as the previous format stored them)
BACKBONE = {
    "_target_": "tokenizer.backbone.build_backbone",
    "name": "vit_small_patch14_dinov2",
    "pretrained": False,
    "checkpoint": None,
    "img_size": FRAME,
    "arch": {"depth": 2, "embed_dim": 64, "num_heads": 4},
}
TOKENIZER = {"_target_": "tokenizer.deltatok.DeltaTok", "_partial_": True, "depth": 1, "layer_scale_init": 1.0}
WORLD = {
    "_target_": "deltaworld.worldmodel.deltaworld.DeltaWorld",
    "_partial_": True,
    "dim": 32,
    "depth": 1,
    "num_heads": 2,
    "rope_dim": 8,
    "layer_scale_init": 1.0,
}
PIXEL = {
    "_target_": "deltaworld.tokenizer.pixel.PixelDeltaToken",
    "patch_size": 4,
    "dim": 32,
    "num_heads": 2,
    "depth": 1,
    "num_tokens": 2,
    "token_dim": 8,
    "key_tokens": None,
    "layer_scale_init": 1.0,
    "diffusion": {"dim": 32, "depth": 1, "num_heads": 2},
}
PIXEL_SIZE = 16
LOADERS: dict[str, Callable] = {
    "tokenizer": load_tokenizer,
    "world": load_world,
    "heads": load_heads,
    "pixel_tokenizer": load_pixel_tokenizer,
    "pixel_world": load_pixel_tokenizer,
}
FIELDS = [
    ("tokenizer", "backbone"),
    ("tokenizer", "tokenizer"),
    ("world", "world"),
    ("world", "backbone"),
    ("heads", "heads"),
    ("pixel_tokenizer", "tokenizer"),
    ("pixel_world", "tokenizer"),
]


def plain(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("_target_", "_partial_")}


def edited(src: Path, dst: Path, key: str, value=None, *, delete: bool = False) -> Path:
    """A copy of export `src` with metadata entry `key` (dotted: "world.depth") set or deleted."""
    meta = read_metadata(src)
    *parents, last = key.split(".")
    node = meta
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return atomic_save_safetensors(load_file(str(src)), dst, {k: json.dumps(v) for k, v in meta.items()})


@pytest.fixture(scope="module")
def models() -> dict:
    backbone = build_backbone(**plain(BACKBONE))
    torch.manual_seed(0)
    deltatok = DeltaTok(dim=backbone.dim, num_heads=backbone.num_heads, **plain(TOKENIZER)).eval()
    world = DeltaWorld(token_dim=deltatok.token_dim, tokens_per_frame=deltatok.num_tokens, **plain(WORLD)).eval()
    heads = build_heads(in_dim=backbone.dim, num_classes=3, depth_range=(1.0, 60.0)).eval()
    pixel = PixelDeltaToken(**plain(PIXEL)).eval()
    return {"backbone": backbone, "deltatok": deltatok, "world": world, "heads": heads, "pixel": pixel}


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per kind, the export the current code writes ("current") and the previous code's ("legacy")."""
    root = tmp_path_factory.mktemp("exports")
    m = models
    stage_cfg = {"backbone": BACKBONE, "tokenizer": TOKENIZER, "frame_size": FRAME}
    tok_meta = TokenizerModule.export_metadata(stage_cfg)
    world_legacy = {**stage_cfg, "world": WORLD, "space": "delta", "token_shape": [1, m["deltatok"].token_dim]}
    heads_meta = {"dataset": "synthetic", "backbone": BACKBONE}
    heads_legacy = {**heads_meta, "heads": heads_config(m["heads"])}
    pixel_cfg = {"tokenizer": PIXEL, "frame_size": PIXEL_SIZE}
    pixel_legacy = {"kind": "pixel_tokenizer", **pixel_cfg}  # pixel exports named their kind, without a version
    world = world_export(m["world"], m["deltatok"])
    files = {
        "tokenizer": {
            "current": export_safetensors(m["deltatok"], root / "tokenizer.safetensors", tok_meta),
            "legacy": export_safetensors(m["deltatok"], root / "tokenizer_v0.safetensors", stage_cfg),
        },
        "world": {
            "current": export_world(
                m["world"],
                m["deltatok"],
                root / "world.safetensors",
                tokenizer_metadata=tok_meta,
                world_config=WORLD,
                space="delta",
            ),
            "legacy": export_safetensors(world, root / "world_v0.safetensors", world_legacy),
        },
        "heads": {
            "current": save_heads(m["heads"], root / "heads.safetensors", heads_meta),
            "legacy": export_safetensors(m["heads"], root / "heads_v0.safetensors", heads_legacy),
        },
        "pixel_tokenizer": {
            "current": export_safetensors(
                m["pixel"], root / "pixel.safetensors", PixelTokenizerModule.export_metadata(pixel_cfg)
            ),
            "legacy": export_safetensors(m["pixel"], root / "pixel_v0.safetensors", pixel_legacy),
        },
    }
    overrides = [
        "experiment=pixel_world_actions_cpu",
        f"tokenizer_ckpt={files['pixel_tokenizer']['current']}",
        *(f"world.{k}={v}" for k, v in plain(WORLD).items()),
    ]
    cfg = OmegaConf.to_container(compose_train(overrides, root), resolve=True)
    module = instantiate(OmegaConf.create(cfg["module"]))
    meta = module.export_metadata(cfg)
    legacy = {
        "kind": "pixel_world",
        "tokenizer": PIXEL,
        "frame_size": PIXEL_SIZE,
        "world": WORLD,
        "token_shape": meta["token_shape"],
        "action_dim": meta["action_dim"],
    }
    files["pixel_world"] = {
        "current": export_safetensors(module.exported(), root / "pixel_world.safetensors", meta),
        "legacy": export_safetensors(module.exported(), root / "pixel_world_v0.safetensors", legacy),
    }
    return files


@torch.no_grad()
def outputs(kind: str, loaded: tuple) -> torch.Tensor:
    """A deterministic output of what a loader returned (or of the models the files were made from)."""
    g = torch.Generator().manual_seed(0)
    if kind == "tokenizer":
        backbone, deltatok = loaded
        frames = synthetic_batch(batch=1, frames=3)["frames"]
        black = backbone.black_features(FRAME, FRAME)[None]
        tokens, recon = deltatok.reconstruct(backbone(frames), backbone.grid(FRAME, FRAME), black)
        return torch.cat([tokens.flatten(), recon.flatten()])
    if kind == "world":
        world = loaded[2]
        context, times = torch.randn(1, 3, 1, world.token_dim, generator=g), torch.arange(3.0)[None] * 0.1
        noise = world.draw_noise((1, 2, 2), generator=g)
        return world.rollout(context, times, 0.3 + torch.arange(2.0)[None] * 0.1, samples=2, noise=noise)
    if kind == "heads":
        heads, x = loaded[0], torch.randn(2, 64, 4, 4, generator=g)
        return torch.cat([heads["segmentation"](x).flatten(), heads["depth"](x).flatten()])
    frames = torch.randint(0, 256, (1, 3, 3, PIXEL_SIZE, PIXEL_SIZE), generator=g, dtype=torch.uint8)
    return loaded[0].encode_video(to_unit(frames))[0]


def original(kind: str, models: dict) -> tuple:
    return {
        "tokenizer": (models["backbone"], models["deltatok"]),
        "world": (None, None, models["world"]),
        "heads": (models["heads"],),
        "pixel_tokenizer": (models["pixel"],),
        "pixel_world": (models["pixel"],),
    }[kind]


@pytest.mark.parametrize("kind", LOADERS)
def test_current_exports_are_plain_data_with_kind_and_version_and_round_trip(kind, exports, models):
    path = exports[kind]["current"]
    meta = read_metadata(path)
    assert meta["kind"] == kind and meta["format_version"] == FORMAT_VERSION
    assert "_target_" not in json.dumps(meta) and "_partial_" not in json.dumps(meta)
    torch.testing.assert_close(outputs(kind, LOADERS[kind](path)), outputs(kind, original(kind, models)))


@pytest.mark.parametrize("kind", LOADERS)
def test_previous_format_exports_still_load_with_the_same_outputs(kind, exports, models):
    path = exports[kind]["legacy"]
    assert "format_version" not in read_metadata(path)
    torch.testing.assert_close(outputs(kind, LOADERS[kind](path)), outputs(kind, original(kind, models)))


def test_a_world_export_carries_its_tokenizer(exports, models):
    loaded = load_tokenizer(exports["world"]["current"])
    torch.testing.assert_close(outputs("tokenizer", loaded), outputs("tokenizer", original("tokenizer", models)))


@pytest.mark.parametrize("version", ["current", "legacy"])
@pytest.mark.parametrize(("kind", "field"), FIELDS)
def test_files_naming_code_are_refused_and_nothing_runs(kind, field, version, exports, tmp_path):
    victim, marker = tmp_path / "victim.txt", tmp_path / "written.txt"
    victim.write_text("keep me")
    hostile = [
        {"_target_": "os.remove", "path": str(victim)},
        {"_target_": "builtins.exec", "source": f"open({str(marker)!r}, 'w').write('x')"},
        {"_target_": "pathlib.Path.write_text", "self": str(marker), "data": "x"},
        {"_target_": "tokenizer.backbone.build_backbone.__globals__"},
    ]
    for i, config in enumerate(hostile):
        bad = edited(exports[kind][version], tmp_path / f"bad{i}.safetensors", field, config)
        refusal = rf"bad{i}.safetensors: metadata field '{field}._target_' names .*export it again"
        with pytest.raises(SchemaError, match=refusal):
            LOADERS[kind](bad)
    assert victim.read_text() == "keep me" and not marker.exists()


@pytest.mark.parametrize(
    ("loader", "kind", "found", "command"),
    [
        ("world", "tokenizer", "a tokenizer export", "deltaworld train experiment=world_cpu_demo tokenizer_ckpt="),
        ("world", "pixel_world", "a pixel_world export", "deltaworld train experiment=world_cpu_demo"),
        ("tokenizer", "heads", "a heads export", "deltaworld train experiment=cpu_demo"),
        ("tokenizer", "pixel_tokenizer", "a pixel_tokenizer export", "deltaworld train"),
        ("pixel_tokenizer", "world", "a world export", "deltaworld train experiment=pixel_cpu"),
        ("heads", "tokenizer", "a tokenizer export", "deltaworld heads data="),
    ],
)
def test_a_wrong_kind_is_one_line_naming_the_file_its_kind_and_the_command(loader, kind, found, command, exports):
    for version in ("current", "legacy"):
        path = exports[kind][version]
        with pytest.raises(SchemaError) as refused:
            LOADERS[loader](path)
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"{path} is {found}") and command in message


def test_unknown_kinds_and_future_versions_are_refused(exports, tmp_path):
    src = exports["world"]["current"]
    with pytest.raises(SchemaError, match="has no known kind \\('banana'\\)"):
        load_world(edited(src, tmp_path / "a.safetensors", "kind", "banana"))
    with pytest.raises(SchemaError, match="format_version 2 is not one this code reads"):
        load_world(edited(src, tmp_path / "b.safetensors", "format_version", 2))
    with pytest.raises(SchemaError, match="has no known kind \\(None\\)"):  # a current file must say its kind
        load_world(edited(src, tmp_path / "c.safetensors", "kind", delete=True))


@pytest.mark.parametrize(
    ("kind", "key", "message"),
    [
        ("tokenizer", "backbone", "metadata has no field 'backbone'"),
        ("world", "world", "metadata has no field 'world'"),
        ("world", "token_shape", "metadata has no field 'token_shape'"),
        ("heads", "heads.in_dim", "metadata field 'heads.in_dim' is missing \\(build_heads requires it\\)"),
        ("pixel_world", "tokenizer", "metadata has no field 'tokenizer'"),
    ],
)
def test_missing_fields_are_refused(kind, key, message, exports, tmp_path):
    path = edited(exports[kind]["current"], tmp_path / "x.safetensors", key, delete=True)
    with pytest.raises(SchemaError, match=f"x.safetensors: {message}"):
        LOADERS[kind](path)


@pytest.mark.parametrize(
    ("kind", "key", "value", "message"),
    [
        ("world", "world.depth", "2", "'world.depth' must be int, got str"),
        ("world", "world.deterministic", 1, "'world.deterministic' must be bool, got int"),
        ("world", "world", [1, 2], "'world' must be dict, got list"),
        ("world", "token_shape", [1], "'token_shape' must be tuple\\[int, int\\], got list"),
        ("world", "space", 3, "'space' must be str, got int"),
        ("tokenizer", "tokenizer.depth", True, "'tokenizer.depth' must be int, got bool"),
        ("tokenizer", "tokenizer.token_dim", "64", "'tokenizer.token_dim' must be int or None, got str"),
        ("tokenizer", "backbone.arch.depth", 2.5, "'backbone.arch.depth' must be int, got float"),
        ("tokenizer", "backbone.checkpoint", {"path": "x"}, "'backbone.checkpoint' must be str or None, got dict"),
        ("heads", "heads.depth_range", [1.0], "'heads.depth_range' must be tuple\\[float, float\\] or None, got list"),
        ("pixel_tokenizer", "tokenizer.diffusion.depth", "1", "'tokenizer.diffusion.depth' must be int, got str"),
        ("pixel_world", "tokenizer.num_tokens", None, "'tokenizer.num_tokens' must be int, got None"),
    ],
)
def test_mistyped_fields_are_refused_naming_file_field_and_argument(kind, key, value, message, exports, tmp_path):
    path = edited(exports[kind]["current"], tmp_path / "x.safetensors", key, value)
    with pytest.raises(SchemaError, match=f"x.safetensors: metadata field {message}"):
        LOADERS[kind](path)


def test_an_int_is_a_fine_float(exports, models, tmp_path):
    path = edited(exports["world"]["current"], tmp_path / "x.safetensors", "world.layer_scale_init", 1)
    torch.testing.assert_close(outputs("world", load_world(path)), outputs("world", original("world", models)))


@pytest.mark.parametrize(
    ("kind", "key", "owner"),
    [
        ("world", "world.foo", "DeltaWorld"),
        ("world", "world.token_dim", "DeltaWorld"),  # the loader supplies it, from the token space
        ("tokenizer", "tokenizer.num_heads", "DeltaTok"),  # from the backbone
        ("tokenizer", "backbone.init", "build_backbone"),
        ("heads", "heads.bins", "build_heads"),
        ("pixel_tokenizer", "tokenizer.diffusion.patch_dim", "PixelDeltaToken"),
        ("pixel_tokenizer", "tokenizer._partial_", "PixelDeltaToken"),
    ],
)
def test_unknown_arguments_are_refused(kind, key, owner, exports, tmp_path):
    path = edited(exports[kind]["current"], tmp_path / "x.safetensors", key, 1)
    with pytest.raises(SchemaError, match=f"metadata field '{key}' is not an argument {owner} takes from a file"):
        LOADERS[kind](path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("backbone.arch.checkpoint_path", "/tmp/x.pth", "'backbone.arch.checkpoint_path' is not an argument"),
        (
            "backbone.arch.pretrained_cfg_overlay",
            {"file": "/tmp/x.pth"},
            "'backbone.arch.pretrained_cfg_overlay' is not",
        ),
        ("backbone.arch.norm_layer", "torch.nn.Identity", "'backbone.arch.norm_layer' is not an argument"),
        ("backbone.arch._target_", "os.remove", "'backbone.arch._target_' is not an argument"),
        ("backbone.name", "hf-hub:timm/vit_small_patch14_dinov2", "'backbone.name' must be a plain model name"),
        ("backbone.name", "timm/vit_small_patch14_dinov2", "'backbone.name' must be a plain model name"),
    ],
)
def test_backbone_arch_and_name_are_restricted_to_plain_architecture_values(key, value, message, exports, tmp_path):
    for kind in ("tokenizer", "world"):
        path = edited(exports[kind]["current"], tmp_path / f"{kind}.safetensors", key, value)
        with pytest.raises(SchemaError, match=message):
            LOADERS[kind](path)
