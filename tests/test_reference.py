"""Numerical parity with the reference implementation's test vectors (../shared/reference).

Every model is built from the `reference_tiny` preset (the `reference` architecture at the vectors'
tiny sizes) and loaded through the importer's checks, so these tests hold the presets and the key
mappings to the reference's numbers: backbone (from a Hugging Face-layout file), DeltaTok, predictor,
best-of-many and the end-to-end rollout, atol 1e-5 in fp32.
"""

from pathlib import Path

import pytest
import torch
from einops import rearrange
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from deltaworld.eval.import_official import reference_architecture
from deltaworld.tokenizer.official import match_state_dict
from deltaworld.tokenizer.rope import patch_rope_2d
from deltaworld.worldmodel.official import load_official_world

from conftest import REFERENCE

ATOL = 1e-5
GRID = (4, 4)  # 64 px frames, patch 16
pytestmark = pytest.mark.usefixtures("reference_dir")  # skips, or fails under CI=true, without the vectors


def split(name: str) -> tuple[dict, dict]:
    tensors = load_file(str(REFERENCE / name))
    weights = {k: v for k, v in tensors.items() if not k.startswith("test.")}
    vectors = {k.removeprefix("test."): v for k, v in tensors.items() if k.startswith("test.")}
    return weights, vectors


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def hf_backbone_file(folder: Path) -> Path:
    """The tiny reference backbone as Hugging Face saves a DINOv3ViTModel (model.safetensors, no prefix)."""
    weights, _ = split("backbone_dinov3_tiny.safetensors")
    path = folder / "model.safetensors"
    save_file({k.removeprefix("backbone."): v for k, v in weights.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    hf = hf_backbone_file(tmp_path_factory.mktemp("dinov3"))
    return reference_architecture(["experiment=reference_tiny", f"backbone.checkpoint={hf}"])


@pytest.fixture(scope="module")
def reference_backbone(arch):
    _, vectors = split("backbone_dinov3_tiny.safetensors")
    return instantiate(arch["backbone"]), vectors


@pytest.fixture(scope="module")
def reference_deltatok(arch):
    weights, vectors = split("deltatok_tiny.safetensors")
    tok = instantiate(arch["tokenizer"])(dim=64, num_heads=4)
    tok.load_state_dict(match_state_dict(weights, tok.state_dict(), source="deltatok_tiny"))  # names unchanged
    return tok.eval(), vectors


@torch.no_grad()
def test_backbone_embeddings_every_layer_and_last_hidden_state(reference_backbone):
    """HF DINOv3 -> timm conversion: all 21 tokens [cls, 4 registers, 16 patches] at every stage."""
    backbone, ref = reference_backbone
    model, outs = backbone.model, {}
    hooks = [model.norm_pre.register_forward_hook(lambda m, i, o: outs.__setitem__("embeddings_out", o))]
    hooks += [
        b.register_forward_hook(lambda m, i, o, n=f"layer_out.{k}": outs.__setitem__(n, o))
        for k, b in enumerate(model.blocks)
    ]
    last = model.forward_features(ref["pixel_values"])
    for h in hooks:
        h.remove()
    assert max_error(last, ref["last_hidden_state"]) < ATOL
    assert sorted(outs) == ["embeddings_out", "layer_out.0", "layer_out.1"]
    for name, value in outs.items():
        assert max_error(value, ref[name]) < ATOL, name


@torch.no_grad()
def test_backbone_patch_features_from_uint8_images(reference_backbone):
    """Our pixel normalisation + prefix-token drop equals the reference processor + DINOv3 wrapper."""
    backbone, ref = reference_backbone
    feats = backbone(ref["images_uint8"][:, None])  # (B, T=1, N, D)
    assert feats.shape == (2, 1, 16, 64)
    assert max_error(feats[:, 0], ref["patch_features"]) < ATOL


def test_patch_rope_tables(reference_deltatok, reference_backbone):
    tok, ref = reference_deltatok
    cos, sin = tok.rope(GRID)
    assert max_error(cos, ref["rope_cos"]) < ATOL and max_error(sin, ref["rope_sin"]) < ATOL
    _, ref_backbone = reference_backbone  # the backbone's table is the tokenizer's
    cos, sin = patch_rope_2d(GRID, 16)
    assert max_error(cos, ref_backbone["rope_cos"]) < ATOL and max_error(sin, ref_backbone["rope_sin"]) < ATOL


@torch.no_grad()
def test_encode_decode_and_every_block(reference_deltatok):
    tok, ref = reference_deltatok
    outs = {}
    hooks = [
        b.register_forward_hook(lambda m, i, o, n=f"encoder_block_out.{k}": outs.__setitem__(n, o))
        for k, b in enumerate(tok.encoder_blocks)
    ]
    hooks += [
        b.register_forward_hook(lambda m, i, o, n=f"decoder_block_out.{k}": outs.__setitem__(n, o))
        for k, b in enumerate(tok.decoder_blocks)
    ]
    z = tok.encode(ref["x"], ref["y"], GRID)
    y_hat = tok.decode(ref["z"], ref["x"], GRID)
    for h in hooks:
        h.remove()
    assert max_error(z, ref["z"]) < ATOL
    assert max_error(y_hat, ref["y_hat"]) < ATOL
    for name, value in outs.items():
        assert max_error(value, ref[name]) < ATOL, name


@torch.no_grad()
def test_three_frame_closed_loop_and_teacher_forced_tokens(reference_deltatok):
    tok, ref = reference_deltatok
    feats, black = ref["rollout.features"], ref["rollout.black_features"]
    tokens, recon = tok.reconstruct(feats, GRID, black)
    assert max_error(tokens, ref["rollout.z"]) < ATOL
    assert max_error(recon, ref["rollout.y_hat"]) < ATOL
    offline = tok.tokenize(feats, GRID, black)
    assert max_error(offline, ref["rollout.tokens_offline"]) < ATOL


@torch.no_grad()
def test_closed_loop_features_from_frames(reference_backbone, reference_deltatok):
    """The backbone's features of the rollout frames and of a black frame, as the reference computes them."""
    backbone, _ = reference_backbone
    _, ref = reference_deltatok
    assert max_error(backbone(ref["rollout.frames_uint8"]), ref["rollout.features"]) < ATOL
    assert max_error(backbone.black_features(64, 64), ref["rollout.black_features"][0]) < ATOL


@pytest.fixture(scope="module")
def reference_world(arch):
    """DeltaWorld from the preset, loaded from the predictor weights laid out as the reference's
    DeltaWorld checkpoint stores them (prefix `predictor.`)."""
    weights, vectors = split("predictor_tiny.safetensors")
    world = instantiate(arch["world"])(token_dim=64, tokens_per_frame=1)
    load_official_world(world, {f"predictor.{k}": v for k, v in weights.items()}, source="predictor_tiny")
    return world.eval(), vectors


@torch.no_grad()
def test_predictor_with_and_without_causal_mask(reference_world):
    from deltaworld.worldmodel.predictor import causal_mask

    world, ref = reference_world
    predictor = world.predictor
    mask = causal_mask(ref["q_indices"], ref["k_indices"])
    assert torch.equal(mask, ref["mask"])
    outs = {}
    hooks = [
        b.register_forward_hook(lambda m, i, o, n=f"block_out.{k}": outs.__setitem__(n, o))
        for k, b in enumerate(predictor.blocks)
    ]
    out = predictor(ref["q"], ref["pos_q"], context=ref["kv"], pos_k=ref["pos_k"], mask=mask)
    for h in hooks:
        h.remove()
    assert max_error(out, ref["out"]) < ATOL
    for name, value in outs.items():
        assert max_error(value, ref[name]) < ATOL, name
    nomask = predictor(ref["q"], ref["pos_q"], context=ref["kv"], pos_k=ref["pos_k"])
    assert max_error(nomask, ref["out_nomask"]) < ATOL


@torch.no_grad()
def test_best_of_many_selection(reference_world):
    from deltaworld.tokenizer.losses import feature_loss

    world, ref = reference_world
    noise = ref["bom.q_samples"]  # (B, T, S, dim)
    losses = world.hypothesis_losses(
        noise,
        ref["bom.kv"][:, :, None],
        ref["bom.pos_k"],
        ref["bom.targets"][:, :, None],
        ref["bom.pos_q"],
        feature_loss("smooth_l1", beta=0.1),
    )
    assert max_error(losses, ref["bom.losses"]) < ATOL
    argmin = losses.argmin(-1)
    assert torch.equal(argmin, ref["bom.argmin"])
    chosen = torch.gather(noise, 2, argmin[:, :, None, None].expand(-1, -1, 1, noise.shape[-1]))[:, :, 0]
    assert torch.equal(chosen, ref["bom.q_best"])


@torch.no_grad()
def test_rollout_tokens_and_decoded_features(reference_world, reference_deltatok, reference_backbone):
    """The reference evaluation rollout (2 context frames, 3 samples, 2 steps) from its frames and
    queries: backbone features, context tokens, predicted tokens per step, decoded features."""
    _, ref = split("deltaworld_rollout_tiny.safetensors")
    world, _ = reference_world
    tok, _ = reference_deltatok
    backbone, _ = reference_backbone
    samples, b = 3, ref["timestamps"].shape[0]
    feats = backbone(ref["frames_uint8"])  # (B, 4, N, D)
    assert max_error(feats[:, :2], ref["ctx_feats"]) < ATOL and max_error(feats[:, 2:], ref["tgts"]) < ATOL
    context = tok.tokenize(feats[:, :2], GRID, backbone.black_features(64, 64))  # (B, 2, K=1, C)
    assert max_error(context[:, :, 0].repeat_interleave(samples, 0), ref["init_kv"]) < ATOL  # row b * M + m
    noise = rearrange(ref["queries"], "h (b m) 1 d -> b m h d", m=samples)
    times = ref["timestamps"]
    for use_cache in (True, False):
        tokens = world.rollout(context, times[:, :2], times[:, 2:], samples=samples, noise=noise, use_cache=use_cache)
        assert max_error(tokens, rearrange(ref["z_hat"], "h (b m) 1 c -> b m h 1 c", b=b)) < ATOL
    preds = tok.decode_rollout(tokens.flatten(0, 1), GRID, ref["init_x"]).unflatten(0, (b, samples))
    assert max_error(preds, ref["preds"]) < ATOL
