"""`deltaworld import-official` on the reference's tiny weights laid out as its released files:
the imported exports run through `deltaworld sample` with the reference rollout's numbers, and
truncated or foreign files are refused naming their first bad key."""

import re
from pathlib import Path

import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file

from deltaworld.cli import main as cli_main
from deltaworld.eval.heads import apply_head, load_heads
from deltaworld.eval.import_official import import_official, parse_heads, reference_architecture
from deltaworld.tokenizer.backbone import build_backbone
from deltaworld.tokenizer.checkpoint import load_tokenizer
from deltaworld.tokenizer.official import hf_dinov3_to_timm
from deltaworld.tokenizer.training import parameter_digest
from deltaworld.worldmodel.checkpoint import load_world

from conftest import REFERENCE

ATOL = 1e-5
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4}
pytestmark = pytest.mark.usefixtures("reference_dir")  # skips, or fails under CI=true, without the vectors


def reference(name: str) -> tuple[dict, dict]:
    tensors = load_file(str(REFERENCE / name))
    return (
        {k: v for k, v in tensors.items() if not k.startswith("test.")},
        {k.removeprefix("test."): v for k, v in tensors.items() if k.startswith("test.")},
    )


def reference_head(num_outputs: int, seed: int) -> dict[str, torch.Tensor]:
    """A head as the reference's models/task_heads.py stores it (BatchNorm `bn`, 1x1 conv `head`)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "bn.weight": 1 + 0.2 * torch.randn(64, generator=g),
        "bn.bias": 0.1 * torch.randn(64, generator=g),
        "bn.running_mean": torch.randn(64, generator=g),
        "bn.running_var": 0.5 + torch.rand(64, generator=g),
        "bn.num_batches_tracked": torch.tensor(100),
        "head.weight": torch.randn(num_outputs, 64, 1, 1, generator=g) / 8,
        "head.bias": torch.randn(num_outputs, generator=g),
    }


def save_bin(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, Path]:
    """The tiny reference weights in the layouts of the released files: the reference's DINOv3
    wrapper state dict (`backbone.*`, Hugging Face names), DeltaTok's checkpoint (its trainable keys),
    a Lightning checkpoint of DeltaWorld (`predictor.*` under "state_dict") and two heads."""
    root = tmp_path_factory.mktemp("released")
    backbone, _ = reference("backbone_dinov3_tiny.safetensors")
    deltatok, _ = reference("deltatok_tiny.safetensors")
    predictor, _ = reference("predictor_tiny.safetensors")
    return {
        "backbone": save_bin(backbone, root / "dinov3-tiny" / "pytorch_model.bin"),
        "tokenizer": save_bin(deltatok, root / "deltatok-kinetics" / "pytorch_model.bin"),
        "world": save_bin(
            {"state_dict": {f"predictor.{k}": v for k, v in predictor.items()}},
            root / "deltaworld-kinetics" / "pytorch_model.bin",
        ),
        "vspw": save_bin(reference_head(124, seed=1), root / "seg-head-vspw" / "pytorch_model.bin"),
        "kitti": save_bin(reference_head(256, seed=2), root / "depth-head-kitti" / "pytorch_model.bin"),
    }


def run_import(files: dict[str, Path], out: Path, **replace: Path) -> None:
    files = {**files, **replace}
    cli_main(
        [
            "import-official",
            f"tokenizer_ckpt={files['tokenizer']}",
            f"world_ckpt={files['world']}",
            f"heads=[{files['vspw']},{files['kitti']}]",
            f"out={out}",
            "experiment=reference_tiny",
            f"backbone.checkpoint={files['backbone']}",
        ]
    )


@pytest.fixture(scope="module")
def imported(released, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported")
    run_import(released, out)
    return out


def test_writes_every_export_and_the_architecture_config(imported):
    names = sorted(p.name for p in imported.iterdir())
    assert names == [
        "config.yaml",
        "heads_kitti.safetensors",
        "heads_vspw.safetensors",
        "tokenizer.safetensors",
        "world.safetensors",
    ]
    config = (imported / "config.yaml").read_text()
    assert "vit_base_patch16_dinov3_qkvb" in config and "rope_dim: 12" in config


@torch.no_grad()
def test_imported_tokenizer_reproduces_the_reference_closed_loop_from_frames(imported):
    backbone, deltatok = load_tokenizer(imported / "tokenizer.safetensors")
    _, ref = reference("deltatok_tiny.safetensors")
    feats = backbone(ref["rollout.frames_uint8"])
    assert (feats - ref["rollout.features"]).abs().max() < ATOL
    tokens, recon = deltatok.reconstruct(feats, (4, 4), backbone.black_features(64, 64).expand(2, -1, -1))
    assert (tokens - ref["rollout.z"]).abs().max() < ATOL
    assert (recon - ref["rollout.y_hat"]).abs().max() < ATOL


@torch.no_grad()
def test_imported_world_gives_the_reference_rollout_through_sample(imported, monkeypatch, tmp_path):
    """`deltaworld sample`'s code path (frames -> backbone -> tokens -> rollout -> closed-loop decode,
    figure, statistics) with the reference's query noise pinned: its predicted tokens and features."""
    from deltaworld.eval.sample import sample_and_describe

    backbone, space, world, meta = load_world(imported / "world.safetensors")
    assert meta["frame_size"] == 64 and not world.deterministic
    _, ref = reference("deltaworld_rollout_tiny.safetensors")
    samples = 3
    noise = rearrange(ref["queries"], "h (b m) 1 d -> b m h d", m=samples)
    monkeypatch.setattr(world, "draw_noise", lambda shape, **_: noise)
    times = ref["timestamps"]  # (B=2, 4): 2 context frames, 2 predicted
    tokens, feats, grid = sample_and_describe(
        backbone,
        space,
        world,
        ref["frames_uint8"],
        times,
        times[:, 2:],
        context=2,
        samples=samples,
        generator=torch.Generator().manual_seed(0),
        out_dir=tmp_path,
        figure_name="hypotheses.png",
    )
    assert grid == (4, 4)
    assert (tokens - rearrange(ref["z_hat"], "h (b m) 1 c -> b m h 1 c", m=samples)).abs().max() < ATOL
    assert (feats - ref["preds"]).abs().max() < ATOL
    assert (tmp_path / "hypotheses.png").is_file() and (tmp_path / "diversity.json").is_file()


def test_deltaworld_sample_command_runs_on_the_import(imported, tmp_path):
    from hydra import compose, initialize_config_module

    from deltaworld.eval.sample import run_sample

    with initialize_config_module(config_module="deltaworld.conf", version_base="1.3"):
        cfg = compose(
            "sample",
            overrides=[
                f"world_ckpt={imported / 'world.safetensors'}",
                f"out_dir={tmp_path}",
                "context=2",
                "horizon=2",
                "samples=2",
            ],
        )
    run_sample(cfg)
    out = load_file(str(tmp_path / "samples.safetensors"))
    assert out["tokens"].shape == (2, 2, 1, 64) and out["features"].shape == (2, 2, 16, 64)
    assert torch.isfinite(out["features"]).all()


@torch.no_grad()
def test_imported_heads_compute_the_reference_heads(imported, released):
    """BatchNorm (running statistics) + 1x1 conv; depth = expectation over 256 bins in [1e-3, 80] m
    under relu(logits) + 0.1, normalised: models/task_heads.py's formulas on the released weights."""
    digest = parameter_digest(load_world(imported / "world.safetensors")[0])
    feats = torch.randn(2, 16, 64)
    x = rearrange(feats, "b (h w) d -> b d h w", h=4)
    for dataset in ("vspw", "kitti"):
        heads, meta = load_heads(imported / f"heads_{dataset}.safetensors")
        assert meta["dataset"] == dataset and meta["backbone_digest"] == digest  # what `deltaworld eval` checks
        w = torch.load(released[dataset], weights_only=True)
        bn = torch.nn.functional.batch_norm(
            x, w["bn.running_mean"], w["bn.running_var"], w["bn.weight"], w["bn.bias"], eps=1e-5
        )
        logits = torch.nn.functional.conv2d(bn, w["head.weight"], w["head.bias"])
        if dataset == "vspw":
            assert list(heads) == ["segmentation"]
            assert (apply_head(heads["segmentation"], feats, (4, 4)) - logits).abs().max() < ATOL
        else:
            weights = torch.relu(logits) + 0.1
            depth = torch.einsum("bkhw,k->bhw", weights / weights.sum(1, keepdim=True), torch.linspace(1e-3, 80.0, 256))
            assert list(heads) == ["depth"]
            assert (apply_head(heads["depth"], feats, (4, 4)) - depth).abs().max() < 1e-4  # metres, values ~40


def test_parse_heads_reads_the_dataset_from_the_path_or_a_prefix():
    assert parse_heads(["/h/seg-head-vspw/a.bin", "kitti:/h/x.bin"]) == [
        ("vspw", Path("/h/seg-head-vspw/a.bin")),
        ("kitti", Path("/h/x.bin")),
    ]
    with pytest.raises(ValueError, match="cannot tell which dataset"):
        parse_heads("/h/model.bin")


def drop(weights: dict, prefix: str) -> dict:
    return {k: v for k, v in weights.items() if not k.startswith(prefix)}


def load_raw(path: Path) -> dict:
    obj = torch.load(path, weights_only=True)
    return obj.get("state_dict", obj)


# (file argument, how it is damaged, the key the refusal must name)
DAMAGED = {
    "truncated tokenizer": (
        "tokenizer",
        lambda f: drop(load_raw(f["tokenizer"]), "decoder_blocks.1."),
        "decoder_blocks.1.norm1.weight",
    ),
    "foreign tokenizer": ("tokenizer", lambda f: load_raw(f["world"]), "z_embed.weight"),
    "tokenizer of another width": (
        "tokenizer",
        lambda f: {**load_raw(f["tokenizer"]), "norm.weight": torch.ones(32)},
        "'norm.weight' has shape (32,)",
    ),
    "truncated world": ("world", lambda f: drop(load_raw(f["world"]), "predictor.head."), "predictor.head.weight"),
    "foreign world": ("world", lambda f: load_raw(f["tokenizer"]), "predictor.blocks.0.norm1.weight"),
    "deeper world": (
        "world",
        lambda f: {**load_raw(f["world"]), "predictor.blocks.2.norm1.weight": torch.ones(64)},
        "predictor.blocks.2.norm1.weight",
    ),
    "head with other classes": ("vspw", lambda f: reference_head(19, seed=1), "'head.weight' has shape (19, 64, 1, 1)"),
    "head without running stats": (
        "kitti",
        lambda f: drop(reference_head(256, seed=2), "bn.running_mean"),
        "bn.running_mean",
    ),
    "truncated backbone": (
        "backbone",
        lambda f: drop(load_raw(f["backbone"]), "backbone.layer.1."),
        "backbone.layer.1.attention.q_proj.weight",
    ),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_refuses_truncated_or_foreign_files_naming_the_first_bad_key(case, released, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command re-raises the refusal instead of exiting with it
    arg, damage, key = DAMAGED[case]
    bad = save_bin(
        damage(released),
        tmp_path
        / ("depth-head-kitti" if arg == "kitti" else "seg-head-vspw" if arg == "vspw" else arg)
        / "pytorch_model.bin",
    )
    # OfficialCheckpointError (ValueError); the backbone's arrives wrapped by Hydra's instantiate
    with pytest.raises(Exception, match=re.escape(key)):
        run_import(released, tmp_path / "out", **{arg: bad})
    assert not (tmp_path / "out" / "world.safetensors").exists()


@torch.no_grad()
def test_timm_files_still_load_and_zero_qv_biases_fit_the_biasless_variant(released, tmp_path):
    """A timm-layout file gives the Hugging Face file's features; the biasless `vit_base_patch16_dinov3`
    takes a file whose q/v biases are zero and refuses non-zero ones."""
    hf = load_raw(released["backbone"])
    frames = reference("backbone_dinov3_tiny.safetensors")[1]["images_uint8"][:, None]
    via_hf = build_backbone(
        name="vit_base_patch16_dinov3_qkvb", checkpoint=str(released["backbone"]), img_size=64, arch=TINY
    )
    timm_file = tmp_path / "timm.safetensors"
    save_file(via_hf.model.state_dict(), str(timm_file))
    via_timm = build_backbone(name="vit_base_patch16_dinov3_qkvb", checkpoint=str(timm_file), img_size=64, arch=TINY)
    assert torch.equal(via_hf(frames), via_timm(frames))

    with pytest.raises(RuntimeError, match=re.escape("backbone.layer.0.attention.q_proj.bias' is non-zero")):
        build_backbone(name="vit_base_patch16_dinov3", checkpoint=str(released["backbone"]), img_size=64, arch=TINY)
    zero = {k: torch.zeros_like(v) if k.endswith(("q_proj.bias", "v_proj.bias")) else v for k, v in hf.items()}
    zero_file = save_bin(zero, tmp_path / "zero" / "pytorch_model.bin")
    biasless = build_backbone(name="vit_base_patch16_dinov3", checkpoint=str(zero_file), img_size=64, arch=TINY)
    with_zero_bias = build_backbone(
        name="vit_base_patch16_dinov3_qkvb", checkpoint=str(zero_file), img_size=64, arch=TINY
    )
    assert (biasless(frames) - with_zero_bias(frames)).abs().max() < ATOL
    assert set(hf_dinov3_to_timm(zero, biasless.model, source="zero")) == set(biasless.model.state_dict())


@torch.no_grad()
def test_full_reference_state_dict_imports_and_carries_its_backbone(released, tmp_path):
    """DeltaTok.state_dict() of the reference (its frozen DINOv3 under `backbone.backbone.`) is accepted
    as the tokenizer file and, converted, as the backbone file too."""
    full = {
        **load_raw(released["tokenizer"]),
        **{f"backbone.{k}": v for k, v in load_raw(released["backbone"]).items()},
    }
    path = save_bin(full, tmp_path / "full" / "pytorch_model.bin")
    arch = reference_architecture(["experiment=reference_tiny", f"backbone.checkpoint={path}"])
    written = import_official(tokenizer=path, out=tmp_path / "out", arch=arch)
    backbone, _ = load_tokenizer(written["tokenizer"])
    ref = reference("backbone_dinov3_tiny.safetensors")[1]
    assert (backbone(ref["images_uint8"][:, None])[:, 0] - ref["patch_features"]).abs().max() < ATOL
