"""Numerical parity with the reference implementation's test vectors (../shared/reference)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenizer.deltatok import DeltaTok

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
ATOL = 1e-5
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference vectors not found at {REFERENCE}")


def split(name: str) -> tuple[dict, dict]:
    tensors = load_file(str(REFERENCE / name))
    weights = {k: v for k, v in tensors.items() if not k.startswith("test.")}
    vectors = {k.removeprefix("test."): v for k, v in tensors.items() if k.startswith("test.")}
    return weights, vectors


@pytest.fixture(scope="module")
def reference_deltatok():
    weights, vectors = split("deltatok_tiny.safetensors")
    tok = DeltaTok(dim=64, num_heads=4, depth=2)
    tok.load_state_dict(weights, strict=True)  # the reference key set, unchanged
    return tok.eval(), vectors


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def test_patch_rope_tables(reference_deltatok):
    tok, ref = reference_deltatok
    cos, sin = tok.rope((4, 4))
    assert max_error(cos, ref["rope_cos"]) < ATOL and max_error(sin, ref["rope_sin"]) < ATOL


@torch.no_grad()
def test_encode_decode_and_every_block(reference_deltatok):
    tok, ref = reference_deltatok
    outs = {}
    hooks = [b.register_forward_hook(lambda m, i, o, n=f"encoder_block_out.{k}": outs.__setitem__(n, o)) for k, b in enumerate(tok.encoder_blocks)]
    hooks += [b.register_forward_hook(lambda m, i, o, n=f"decoder_block_out.{k}": outs.__setitem__(n, o)) for k, b in enumerate(tok.decoder_blocks)]
    z = tok.encode(ref["x"], ref["y"], (4, 4))
    y_hat = tok.decode(ref["z"], ref["x"], (4, 4))
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
    tokens, recon = tok.reconstruct(feats, (4, 4), black)
    assert max_error(tokens, ref["rollout.z"]) < ATOL
    assert max_error(recon, ref["rollout.y_hat"]) < ATOL
    offline = tok.tokenize(feats, (4, 4), black)
    assert max_error(offline, ref["rollout.tokens_offline"]) < ATOL


@pytest.fixture(scope="module")
def reference_predictor():
    from worldmodel.predictor import Predictor

    weights, vectors = split("predictor_tiny.safetensors")
    predictor = Predictor(dim=64, context_dim=64, depth=2, num_heads=4, rope_dim=12)
    predictor.load_state_dict(weights, strict=True)
    return predictor.eval(), vectors


@torch.no_grad()
def test_predictor_with_and_without_causal_mask(reference_predictor):
    from worldmodel.predictor import causal_mask

    predictor, ref = reference_predictor
    mask = causal_mask(ref["q_indices"], ref["k_indices"])
    assert torch.equal(mask, ref["mask"])
    outs = {}
    hooks = [b.register_forward_hook(lambda m, i, o, n=f"block_out.{k}": outs.__setitem__(n, o)) for k, b in enumerate(predictor.blocks)]
    out = predictor(ref["q"], ref["pos_q"], context=ref["kv"], pos_k=ref["pos_k"], mask=mask)
    for h in hooks:
        h.remove()
    assert max_error(out, ref["out"]) < ATOL
    for name, value in outs.items():
        assert max_error(value, ref[name]) < ATOL, name
    nomask = predictor(ref["q"], ref["pos_q"], context=ref["kv"], pos_k=ref["pos_k"])
    assert max_error(nomask, ref["out_nomask"]) < ATOL


@pytest.fixture(scope="module")
def reference_world(reference_predictor):
    from worldmodel.deltaworld import DeltaWorld

    predictor, _ = reference_predictor
    world = DeltaWorld(token_dim=64, dim=64, depth=2, num_heads=4, rope_dim=12)
    world.load_state_dict({f"predictor.{k}": v for k, v in predictor.state_dict().items()}, strict=True)
    return world.eval()


@torch.no_grad()
def test_best_of_many_selection(reference_world, reference_predictor):
    from tokenizer.losses import feature_loss

    _, ref = reference_predictor
    noise = ref["bom.q_samples"]  # (B, T, S, dim)
    losses = reference_world.hypothesis_losses(
        noise, ref["bom.kv"][:, :, None], ref["bom.pos_k"], ref["bom.targets"][:, :, None], ref["bom.pos_q"],
        feature_loss("smooth_l1", beta=0.1),
    )
    assert max_error(losses, ref["bom.losses"]) < ATOL
    argmin = losses.argmin(-1)
    assert torch.equal(argmin, ref["bom.argmin"])
    chosen = torch.gather(noise, 2, argmin[:, :, None, None].expand(-1, -1, 1, noise.shape[-1]))[:, :, 0]
    assert torch.equal(chosen, ref["bom.q_best"])


@torch.no_grad()
def test_rollout_tokens_and_decoded_features(reference_world, reference_deltatok):
    """The reference evaluation rollout (2 context frames, 3 samples, 2 steps) from its own context
    tokens and queries: predicted tokens per step and the closed-loop decoded features."""
    from einops import rearrange

    _, ref = split("deltaworld_rollout_tiny.safetensors")
    tok, _ = reference_deltatok
    samples, b = 3, ref["timestamps"].shape[0]
    context = ref["init_kv"][::samples, :, None]  # (B, 2, K=1, C): row b * M + m, take m = 0
    assert torch.equal(ref["init_kv"], context[:, :, 0].repeat_interleave(samples, 0))
    noise = rearrange(ref["queries"], "h (b m) 1 d -> b m h d", m=samples)
    times = ref["timestamps"]
    for use_cache in (True, False):
        tokens = reference_world.rollout(context, times[:, :2], times[:, 2:], samples=samples, noise=noise, use_cache=use_cache)
        assert max_error(tokens, rearrange(ref["z_hat"], "h (b m) 1 c -> b m h 1 c", b=b)) < ATOL
    feats = tok.decode_rollout(tokens.flatten(0, 1), (4, 4), ref["init_x"]).unflatten(0, (b, samples))
    assert max_error(feats, ref["preds"]) < ATOL
