"""Pixel DeltaToken: streaming == batch, causality, key frames, diffusion decoder, learning a round
trip that beats copy-last, the CPU preset's module and the codec command."""

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from deltaworld.data.sources import SyntheticSource
from deltaworld.tokenizer.checkpoint import export_safetensors
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.pixel import PixelDeltaToken, load_pixel_tokenizer, to_unit
from deltaworld.tokenizer.pixel_metrics import psnr_per_frame, ssim_per_frame, token_budget
from deltaworld.tokenizer.pixel_module import PixelTokenizerModule
from deltaworld.tokenizer.streaming import DecoderSession, EncoderSession

from conftest import OPTIMIZATION, compose_train

SIZE = 16  # 4x4 grid of 4x4 patches


def tiny_pixel(**kw) -> PixelDeltaToken:
    torch.manual_seed(0)
    defaults = dict(
        patch_size=4,
        dim=32,
        num_heads=2,
        depth=1,
        num_tokens=2,
        token_dim=8,
        layer_scale_init=1.0,
        diffusion=dict(dim=32, depth=1, num_heads=2, layer_scale_init=1.0),
    )
    model = PixelDeltaToken(**{**defaults, **kw})
    for p in (*model.head.parameters(), *model.key_head.parameters()):  # zero heads output the reference
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def clip(frames: int = 6, seed: int = 0, gap: float = 0.1) -> torch.Tensor:
    source = SyntheticSource(num_frames=frames, height=SIZE, width=SIZE, min_gap=gap, max_gap=gap)
    return source.sample_clip(np.random.default_rng(seed))["frames"]


def test_core_is_deltatok_and_layout():
    model = tiny_pixel(key_tokens=5, key_interval=3)
    assert isinstance(model.core, DeltaTok) and any(k.startswith("core.encoder_blocks.0.") for k in model.state_dict())
    assert model.token_counts(7) == [5, 2, 2, 5, 2, 2, 5]
    tokens, recon = model.encode_video(to_unit(torch.stack([clip(7), clip(7, seed=1)])))
    assert tokens.shape == (2, 23, 8) and recon.shape == (2, 7, 3, SIZE, SIZE)
    assert [t.shape[1] for t in model.split_tokens(tokens)] == model.token_counts(7)
    with pytest.raises(ValueError, match="do not split"):
        model.split_tokens(tokens[:, :-1])
    with pytest.raises(ValueError, match="does not stack"):
        model.frame_tokens(tokens)
    assert tiny_pixel().frame_tokens(torch.zeros(2, 6, 8)).shape == (2, 3, 2, 8)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        model.encode_video(torch.zeros(1, 2, 3, 18, SIZE))


def test_streaming_equals_batch_exactly():
    model = tiny_pixel(key_tokens=4, key_interval=3)
    frames = torch.stack([clip(), clip(seed=1)])  # (2, 6, 3, H, W)
    tokens, recon = model.encode_video(to_unit(frames))
    encoder = EncoderSession(model)
    decoder = DecoderSession(model, (SIZE, SIZE))
    sampler = DecoderSession(model, (SIZE, SIZE), decoder="diffusion", steps=2, seed=7)
    streamed, shown, sampled = [], [], []
    for t in range(frames.shape[1]):
        streamed.append(encoder.push(frames[:, t]))
        shown.append(decoder.push(streamed[-1]))
        sampled.append(sampler.push(streamed[-1]))
        assert torch.equal(encoder.reconstruction, shown[-1])  # the receiver holds the sender's reference
        assert encoder.prev.shape == (2, 16, 48)  # constant state: one reference frame of patches
    assert torch.equal(torch.cat(streamed, 1), tokens)
    assert torch.equal(torch.stack(shown, 1), recon)
    batch_sampled = model.decode_video(
        model.split_tokens(tokens),
        (SIZE, SIZE),
        decoder="diffusion",
        steps=2,
        generator=torch.Generator().manual_seed(7),
    )
    assert torch.equal(torch.stack(sampled, 1), batch_sampled)
    with pytest.raises(ValueError, match="frame 0 takes 4 tokens"):
        DecoderSession(model, (SIZE, SIZE)).push(streamed[1])


def test_causal_and_key_frames_reset_the_reference():
    model = tiny_pixel(key_interval=3)
    frames = to_unit(clip())[None]
    changed = frames.clone()
    changed[:, 4:] = -changed[:, 4:]  # alter the future from frame 4 on
    (tok_a, rec_a), (tok_b, rec_b) = model.encode_video(frames), model.encode_video(changed)
    k = model.num_tokens
    assert torch.equal(tok_a[:, : 4 * k], tok_b[:, : 4 * k]) and torch.equal(rec_a[:, :4], rec_b[:, :4])
    assert not torch.allclose(tok_a[:, 4 * k :], tok_b[:, 4 * k :])
    # frame 3 is a key frame: coded against black, whatever came before
    earlier = frames.clone()
    earlier[:, :3] = 0.0
    tok_c, rec_c = model.encode_video(earlier)
    assert torch.equal(tok_c[:, 3 * k :], tok_a[:, 3 * k :]) and torch.equal(rec_c[:, 3:], rec_a[:, 3:])
    assert not torch.allclose(tok_c[:, 2 * k : 3 * k], tok_a[:, 2 * k : 3 * k])


def test_diffusion_loss_decreases_and_sampling_is_seeded():
    model = tiny_pixel()
    denoiser, grid = model.denoiser, (4, 4)
    target = model.patchify(to_unit(torch.stack([clip(1, seed=s)[0] for s in range(4)])))  # (4, 16, 48)
    det = target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    tokens = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(2))

    def held_out_loss() -> float:  # same noise and times every call
        with torch.no_grad():
            return denoiser.loss(target, det, tokens, grid, generator=torch.Generator().manual_seed(3)).item()

    before = held_out_loss()
    opt = torch.optim.Adam(denoiser.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(4)
    for _ in range(60):
        loss = denoiser.loss(target, det, tokens, grid, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out_loss() < 0.8 * before
    a = denoiser.sample(det, tokens, grid, steps=3, generator=torch.Generator().manual_seed(5))
    b = denoiser.sample(det, tokens, grid, steps=3, generator=torch.Generator().manual_seed(5))
    c = denoiser.sample(det, tokens, grid, steps=3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="no diffusion decoder"):
        tiny_pixel(diffusion=None).refine(det, tokens, grid)


@pytest.mark.parametrize("steps", [1, 4])
def test_diffusion_sample_lands_on_the_predicted_clean_residual(steps, monkeypatch):
    """The Euler path of the x-prediction flow ends on the network's last clean estimate: with a
    network that always answers r, every seed samples det + scale r, and the loss at r is zero."""
    denoiser, grid = tiny_pixel().denoiser, (4, 4)
    det = torch.randn(2, 16, 48, generator=torch.Generator().manual_seed(0))
    residual = torch.randn(2, 16, 48, generator=torch.Generator().manual_seed(1))
    tokens = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(denoiser, "predict_clean", lambda *args: residual)
    for seed in (3, 4):
        sampled = denoiser.sample(det, tokens, grid, steps=steps, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(sampled, det + denoiser.residual_scale * residual)
    target = det + denoiser.residual_scale * residual
    assert denoiser.loss(target, det, tokens, grid, generator=torch.Generator().manual_seed(5)).item() < 1e-8


def test_round_trip_on_tiny_video_beats_copy_last():
    frames = clip(3, gap=0.3)[None]  # (1, 3, 3, 16, 16), large motion between frames
    torch.manual_seed(0)
    model = PixelDeltaToken(
        patch_size=4,
        dim=64,
        num_heads=4,
        depth=2,
        num_tokens=4,
        token_dim=16,
        key_tokens=16,
        layer_scale_init=1.0,
        init_std=0.125,
        diffusion=None,
    )
    module = PixelTokenizerModule(tokenizer=model, **OPTIMIZATION)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        loss = module.clip_losses(frames)["recon"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = to_unit(frames)
    with torch.no_grad():
        _, recon = model.encode_video(x)
    codec = psnr_per_frame(recon[:, 1:], x[:, 1:]).mean()
    copy_last = psnr_per_frame(x[:, :-1], x[:, 1:]).mean()  # the true previous frame, uncompressed
    assert codec > copy_last, (codec, copy_last)
    assert ssim_per_frame(recon, x).shape == (1, 3)


def test_token_budget_matches_the_seed():
    # 5 s of 480x832 at 24 fps, 8 tokens per frame and a 24-token first frame: the seed's 976 tokens
    counts = PixelDeltaToken.token_counts(tiny_pixel(num_tokens=8, key_tokens=24), 120)
    budget = token_budget(counts, token_dim=16, height=480, width=832, fps=24, patch_size=16)
    assert budget.delta_tokens == 976 and budget.vae_tokens == 30 * 60 * 104
    assert round(budget.vs_vae) == 192 and budget.tokens_per_second == pytest.approx(195.2)


def test_cpu_preset_module_step_and_export(tmp_path):
    cfg = compose_train(["experiment=pixel_cpu", "frame_size=16", "tokenizer.patch_size=4"], tmp_path)
    module = instantiate(cfg.module)
    frames = torch.stack([clip(3), clip(3, seed=1)])
    loss = module.training_step({"frames": frames}, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.tokenizer.core.encoder_blocks[0].attention.q_proj.weight.grad is not None
    assert module.tokenizer.denoiser.out[1].weight.grad is not None
    from omegaconf import OmegaConf

    path = export_safetensors(
        module.exported(),
        tmp_path / "tok.safetensors",
        metadata=module.export_metadata(OmegaConf.to_container(cfg, resolve=True)),
    )
    loaded, meta = load_pixel_tokenizer(path)
    assert meta["frame_size"] == 16 and loaded.key_tokens == cfg.tokenizer.key_tokens
    torch.testing.assert_close(
        loaded.encode_video(to_unit(frames))[0], module.tokenizer.eval().encode_video(to_unit(frames))[0]
    )


def test_denoiser_gradients_do_not_shrink_the_codec_step():
    module = PixelTokenizerModule(tokenizer=tiny_pixel(), **OPTIMIZATION)
    losses = module.clip_losses(torch.stack([clip(3), clip(3, seed=1)]))
    (losses["recon"] + 1e3 * losses["diffusion"]).backward()  # a denoiser gradient far above the clip
    denoiser = set(module.tokenizer.denoiser.parameters())
    codec = [p for p in module.tokenizer.parameters() if p not in denoiser and p.grad is not None]
    codec_before = [p.grad.clone() for p in codec]
    codec_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in codec_before]))
    assert codec_norm < 1.0  # so the codec's own clip leaves it as it is
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    for p, before in zip(codec, codec_before, strict=True):
        torch.testing.assert_close(p.grad, before)
    denoiser_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in denoiser]))
    torch.testing.assert_close(denoiser_norm, torch.tensor(1.0), rtol=1e-4, atol=1e-4)


def test_codec_command_round_trip(tmp_path, capsys):
    from deltaworld.cli import main as cli_main
    from deltaworld.data.video import write_video

    model = tiny_pixel(key_tokens=4)
    ckpt = export_safetensors(
        model,
        tmp_path / "tok.safetensors",
        metadata={
            "kind": "pixel_tokenizer",
            "frame_size": SIZE,
            "tokenizer": {
                "_target_": "deltaworld.tokenizer.pixel.PixelDeltaToken",
                "patch_size": 4,
                "dim": 32,
                "num_heads": 2,
                "depth": 1,
                "num_tokens": 2,
                "token_dim": 8,
                "key_tokens": 4,
                "diffusion": {"dim": 32, "depth": 1, "num_heads": 2},
            },
        },
    )
    write_video(tmp_path / "in.mp4", clip(5), fps=10)
    cli_main(["codec", "encode", f"input={tmp_path / 'in.mp4'}", f"output={tmp_path / 'out.dtok'}", f"ckpt={ckpt}"])
    cli_main(
        [
            "codec",
            "decode",
            f"input={tmp_path / 'out.dtok'}",
            f"output={tmp_path / 'out.mp4'}",
            "decoder=diffusion",
            "steps=2",
        ]
    )
    text = capsys.readouterr().out
    assert text.count("PSNR") == 2 and "tokens/s of video" in text and "reduction vs VAE" in text
    assert (tmp_path / "out.mp4").is_file()
    cli_main(["codec", "action=eval", f"ckpt={ckpt}", "clips=2", "frames=4", "size=16", f"out_dir={tmp_path / 'eval'}"])
    records = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {r["method"] for r in records} == {"deterministic", "diffusion", "copy_last"}
    assert (tmp_path / "eval" / "psnr_over_time.png").is_file()
