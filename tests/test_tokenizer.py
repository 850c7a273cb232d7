"""Backbone, blocks and DeltaTok: shapes, invariants and agreement between code paths."""

import pytest
import torch
import torch.nn.functional as F

from deltaworld.tokenizer.attention import attention
from deltaworld.tokenizer.backbone import BackboneCheckpointError, build_backbone
from deltaworld.tokenizer.checkpoint import export_safetensors, load_weights
from deltaworld.tokenizer.losses import feature_loss, log_cosh
from deltaworld.tokenizer.module import TokenizerModule
from deltaworld.tokenizer.rope import apply_rope, patch_rope_2d, time_rope
from deltaworld.tokenizer.training import param_groups

from conftest import FRAME, OPTIMIZATION, make_deltatok, synthetic_batch


def test_backbone_shapes_and_dynamic_size(tiny_backbone):
    frames = torch.randint(0, 256, (2, 3, 3, 42, 70), dtype=torch.uint8)
    feats = tiny_backbone(frames)
    assert feats.shape == (2, 3, 3 * 5, 64)  # prefix tokens dropped, 3x5 grid
    assert tiny_backbone.grid(42, 70) == (3, 5)


def test_backbone_rejects_bad_frames(tiny_backbone):
    with pytest.raises(ValueError, match="not a multiple of the backbone patch size 14"):
        tiny_backbone(torch.zeros(1, 1, 3, 50, 56, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 frames"):
        tiny_backbone(torch.zeros(1, 1, 3, 56, 56))


def test_backbone_features_are_causal_per_frame(tiny_backbone):
    frames = torch.randint(0, 256, (1, 4, 3, FRAME, FRAME), dtype=torch.uint8)
    changed = frames.clone()
    changed[:, 2:] = 255 - changed[:, 2:]
    a, b = tiny_backbone(frames), tiny_backbone(changed)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_random_init_is_reproducible_and_warns():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        a = build_backbone(img_size=FRAME, arch={"depth": 1, "embed_dim": 32, "num_heads": 2})
    with pytest.warns(UserWarning):
        b = build_backbone(img_size=FRAME, arch={"depth": 1, "embed_dim": 32, "num_heads": 2})
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_backbone_local_checkpoint_resamples_and_refuses_misfit(tiny_backbone, tmp_path):
    path = export_safetensors(tiny_backbone.model, tmp_path / "vit.safetensors")
    arch = {"depth": 2, "embed_dim": 64, "num_heads": 4}
    loaded = build_backbone(img_size=2 * FRAME, checkpoint=str(path), arch=arch)  # other pos-embed grid
    frames = torch.randint(0, 256, (1, 1, 3, FRAME, FRAME), dtype=torch.uint8)
    assert loaded.model.pos_embed.shape[1] != tiny_backbone.model.pos_embed.shape[1]
    torch.testing.assert_close(loaded.model.blocks[0].attn.qkv.weight, tiny_backbone.model.blocks[0].attn.qkv.weight)
    assert loaded(frames).shape == tiny_backbone(frames).shape
    with pytest.raises(BackboneCheckpointError, match="does not fit architecture"):
        build_backbone(img_size=FRAME, checkpoint=str(path), arch={"depth": 2, "embed_dim": 32, "num_heads": 4})
    with pytest.raises(FileNotFoundError):
        build_backbone(checkpoint=str(tmp_path / "missing.pth"), arch=arch)


@pytest.mark.parametrize("num_tokens,token_dim", [(1, None), (4, None), (1, 16), (4, 8)])
def test_deltatok_shapes(tiny_backbone, num_tokens, token_dim):
    tok = make_deltatok(tiny_backbone, num_tokens=num_tokens, token_dim=token_dim)
    feats = torch.randn(2, 3, 16, 64)
    black = torch.randn(16, 64)
    tokens = tok.tokenize(feats, (4, 4), black)
    assert tokens.shape == (2, 3, num_tokens, token_dim or 64)
    assert tok.decode(tokens[:, 0], black.expand(2, -1, -1), (4, 4)).shape == (2, 16, 64)
    assert tok.decode_rollout(tokens, (4, 4), feats[:, 0]).shape == (2, 3, 16, 64)
    codec_tokens, recon = tok.reconstruct(feats, (4, 4), feats[:, 0])
    assert codec_tokens.shape == tokens.shape and recon.shape == feats.shape
    has_bottleneck = any(k.startswith("to_token") for k in tok.state_dict())
    assert has_bottleneck == (token_dim is not None)


def test_tokenize_matches_pairwise_encode_and_first_frame_uses_black(tiny_deltatok):
    feats, black = torch.randn(2, 3, 16, 64), torch.randn(16, 64)
    tokens = tiny_deltatok.tokenize(feats, (4, 4), black)
    torch.testing.assert_close(tokens[:, 0], tiny_deltatok.encode(black.expand(2, -1, -1), feats[:, 0], (4, 4)))
    torch.testing.assert_close(tokens[:, 2], tiny_deltatok.encode(feats[:, 1], feats[:, 2], (4, 4)))


def test_encode_difference_feeds_the_change_in_place_of_the_current_frame(tiny_backbone):
    reference = make_deltatok(tiny_backbone, layer_scale_init=1.0)
    difference = make_deltatok(tiny_backbone, layer_scale_init=1.0, encode_difference=True)
    prev, cur = torch.randn(2, 2, 16, tiny_backbone.dim).unbind(0)
    tokens = difference.encode(prev, cur, (4, 4))
    assert torch.allclose(tokens, reference.encode(prev, cur - prev, (4, 4)), atol=1e-6)
    assert not torch.allclose(tokens, reference.encode(prev, cur, (4, 4)), atol=1e-3)


def test_decode_rollout_and_reconstruct_are_closed_loop(tiny_deltatok):
    feats, g = torch.randn(1, 3, 16, 64), (4, 4)
    tokens = tiny_deltatok.tokenize(feats, g, torch.zeros(16, 64))
    decoded = tiny_deltatok.decode_rollout(tokens[:, 1:], g, feats[:, 0])
    step1 = tiny_deltatok.decode(tokens[:, 1], feats[:, 0], g)
    step2 = tiny_deltatok.decode(tokens[:, 2], step1, g)  # from the decoded frame, not the truth
    torch.testing.assert_close(decoded, torch.stack((step1, step2), 1))
    codec_tokens, recon = tiny_deltatok.reconstruct(feats[:, 1:], g, feats[:, 0])
    torch.testing.assert_close(codec_tokens[:, 0], tokens[:, 1])  # first step: true previous frame
    z2 = tiny_deltatok.encode(recon[:, 0], feats[:, 2], g)  # then against the reconstruction
    torch.testing.assert_close(codec_tokens[:, 1], z2)
    torch.testing.assert_close(recon[:, 1], tiny_deltatok.decode(z2, recon[:, 0], g))


def test_rope_is_relative_and_rotation_is_norm_preserving():
    cos, sin = patch_rope_2d((4, 4), 16)
    q = torch.randn(1, 1, 16, 16)
    rotated = apply_rope(q, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))
    # time RoPE: the q.k score depends only on the time difference
    a, b = torch.randn(8), torch.randn(8)

    def score(tq, tk):
        cq, sq = time_rope(torch.tensor([tq]), 8)
        ck, sk = time_rope(torch.tensor([tk]), 8)
        return (apply_rope(a[None], cq, sq) * apply_rope(b[None], ck, sk)).sum()

    torch.testing.assert_close(score(0.7, 0.2), score(1.9, 1.4), atol=1e-4, rtol=0)  # fp32 angle rounding
    assert not torch.isclose(score(0.7, 0.2), score(0.7, 0.4))


def test_leading_tokens_are_not_rotated():
    cos, sin = patch_rope_2d((2, 2), 8)
    t = torch.randn(1, 6, 8)
    out = apply_rope(t, cos, sin)
    torch.testing.assert_close(out[:, :2], t[:, :2])
    assert not torch.allclose(out[:, 2:], t[:, 2:])


def test_attention_matches_explicit_softmax():
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    mask = torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + mask, -1) @ v
    torch.testing.assert_close(attention(q, k, v, mask), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash_and_sdpa_paths_agree_on_gpu():
    from deltaworld.tokenizer import attention as attn_mod

    if attn_mod.flash_attn_func is None:
        pytest.skip("flash-attn not installed")
    q, k, v = torch.randn(3, 2, 4, 64, 64, device="cuda", dtype=torch.bfloat16).unbind(0)
    flash = attention(q, k, v)
    sdpa = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(flash, sdpa, atol=2e-2, rtol=2e-2)


def test_losses():
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(log_cosh(x, torch.zeros_like(x)), torch.log(torch.cosh(x)))
    assert torch.isfinite(log_cosh(torch.tensor([1e4]), torch.tensor([0.0]))).all()
    assert feature_loss("smooth_l1", beta=0.1)(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(0.95)
    with pytest.raises(ValueError, match="unknown loss"):
        feature_loss("l3")


def test_no_weight_decay_on_norms_biases_embeddings(tiny_deltatok):
    decay, no_decay = param_groups(tiny_deltatok)
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0  # decay: the optimizer's own
    decay_ids = {id(p) for p in decay["params"]}
    named = dict(tiny_deltatok.named_parameters())
    assert id(named["encoder_blocks.0.attention.q_proj.weight"]) in decay_ids
    for name in [
        "z_embed.weight",
        "norm.weight",
        "encoder_blocks.0.attention.q_proj.bias",
        "encoder_blocks.0.layer_scale1.lambda1",
        "encoder_blocks.0.attention.q_norm.weight",
    ]:
        assert id(named[name]) not in decay_ids, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval(tiny_backbone, tiny_deltatok):
    module = TokenizerModule(backbone=tiny_backbone, deltatok=tiny_deltatok, rope_rescale=2.0, **OPTIMIZATION)
    module.train()
    assert not tiny_backbone.training and not any(m.training for m in tiny_backbone.modules())
    assert tiny_deltatok.training
    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    loss = module.training_step(synthetic_batch(), 0)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.parameters())
    assert all(p.grad is not None for p in tiny_deltatok.parameters() if p.requires_grad and p.ndim > 1)
    for k, v in tiny_backbone.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_deltatok_learns_well_below_copy_last(tiny_backbone):
    """A few hundred steps on a handful of clips: closed-loop reconstruction beats copy-last."""
    torch.manual_seed(0)
    tok = make_deltatok(tiny_backbone, layer_scale_init=0.1)
    batch = synthetic_batch(batch=4, frames=4)
    feats = tiny_backbone(batch["frames"])
    prev, cur = feats[:, :-1].flatten(0, 1), feats[:, 1:].flatten(0, 1)
    opt = torch.optim.AdamW(tok.parameters(), lr=2e-3)
    for _ in range(250):
        loss = log_cosh(tok.decode(tok.encode(prev, cur, (4, 4)), prev, (4, 4)), cur).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, recon = tok.reconstruct(feats[:, 1:], (4, 4), feats[:, 0])
    closed_loop = F.mse_loss(recon, feats[:, 1:]).item()
    copy_last = F.mse_loss(feats[:, :1].expand_as(feats[:, 1:]), feats[:, 1:]).item()
    assert closed_loop < 0.3 * copy_last, (closed_loop, copy_last)


def test_export_and_reload_give_identical_outputs(tiny_deltatok, tmp_path):
    path = export_safetensors(tiny_deltatok, tmp_path / "tok.safetensors")
    fresh = make_deltatok_like(tiny_deltatok)
    fresh.load_state_dict(load_weights(path))
    x, y = torch.randn(2, 2, 16, 64).unbind(0)
    torch.testing.assert_close(fresh.encode(x, y, (4, 4)), tiny_deltatok.encode(x, y, (4, 4)), rtol=0, atol=0)


def make_deltatok_like(tok):
    torch.manual_seed(123)  # different init, so equality can only come from the loaded weights
    from deltaworld.tokenizer.deltatok import DeltaTok

    return DeltaTok(dim=tok.dim, num_heads=tok.num_heads, depth=len(tok.encoder_blocks))
