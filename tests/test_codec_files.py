"""`deltaworld codec` on real files: every decoded frame encoded with its true time, any aspect
ratio, and token files checked before anything is written."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_data import grey_frames
from test_data_pipeline import VFR_TICKS, write_vfr
from test_pixel import tiny_pixel

from deltaworld.data.video import iter_frames, probe_video, write_video
from deltaworld.eval.codec_commands import decode_file, encode_file, read_token_file
from deltaworld.tokenizer.checkpoint import export_safetensors

SIZE = 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = tiny_pixel(key_tokens=4)
    config = {
        "patch_size": 4,
        "dim": 32,
        "num_heads": 2,
        "depth": 1,
        "num_tokens": 2,
        "token_dim": 8,
        "key_tokens": 4,
        "layer_scale_init": 1.0,
        "diffusion": {"dim": 32, "depth": 1, "num_heads": 2, "layer_scale_init": 1.0},
    }
    path = tmp_path_factory.mktemp("ckpt") / "tok.safetensors"
    return export_safetensors(
        model, path, metadata={"kind": "pixel_tokenizer", "frame_size": SIZE, "tokenizer": config}
    )


def token_file(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, {k: json.loads(v) for k, v in f.metadata().items()}


def test_every_frame_of_an_irregular_video_is_encoded_at_its_true_time(tmp_path, ckpt):
    video = tmp_path / "vfr.mkv"
    write_vfr(video, VFR_TICKS)  # 8 frames over 1.4 s, gaps from 1 to 11 ticks of 1/30 s
    encode_file(video, tmp_path / "vfr.dtok", ckpt=ckpt)
    tensors, meta = token_file(tmp_path / "vfr.dtok")
    assert meta["num_frames"] == len(VFR_TICKS) and meta["kind"] == "pixel_tokens"
    torch.testing.assert_close(
        tensors["timestamps"], torch.tensor(VFR_TICKS, dtype=torch.float64) / 30, atol=1e-3, rtol=0
    )  # mkv: ms
    decode_file(tmp_path / "vfr.dtok", tmp_path / "vfr.mp4")
    assert len(list(iter_frames(tmp_path / "vfr.mp4"))) == len(VFR_TICKS)


def test_a_wide_video_keeps_its_aspect_and_its_whole_width(tmp_path, ckpt, capsys):
    video = tmp_path / "wide.mp4"
    write_video(video, grey_frames(5, 24, 40), fps=10)  # 5:3, not a multiple of the 4 px patches once resized
    encode_file(video, tmp_path / "wide.dtok", ckpt=ckpt)
    _, meta = token_file(tmp_path / "wide.dtok")
    assert (meta["height"], meta["width"]) == (16, 26)  # short side 16, aspect kept (26.7 -> even 26)
    assert meta["pad"] == [0, 2] and "padded by 2 px right" in meta["geometry"]
    decode_file(tmp_path / "wide.dtok", tmp_path / "wide_out.mp4")
    info = probe_video(tmp_path / "wide_out.mp4")
    assert (info.height, info.width, info.num_frames) == (16, 26, 5)
    assert capsys.readouterr().out.count("PSNR") == 2  # decode scored against the source, at the coded size


def test_damaged_token_files_are_refused_before_any_output(tmp_path, ckpt):
    video = tmp_path / "in.mp4"
    write_video(video, grey_frames(4, 16, 16), fps=10)
    good = encode_file(video, tmp_path / "good.dtok", ckpt=ckpt)
    tensors, meta = token_file(good)
    out = tmp_path / "out.mp4"

    def refused(name: str, tensors: dict, meta: dict, match: str) -> None:
        path = tmp_path / name
        save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
        with pytest.raises(ValueError, match=match):
            decode_file(path, out)
        assert not out.exists()

    refused("nan.dtok", {**tensors, "tokens": tensors["tokens"].clone().fill_(float("nan"))}, meta, "NaN")
    refused("short.dtok", {**tensors, "tokens": tensors["tokens"][:-1].contiguous()}, meta, "tokens, but 4 frames take")
    refused("size.dtok", tensors, {**meta, "pad": [1, 0]}, "not a multiple of the patch size")
    refused("kind.dtok", tensors, {**meta, "kind": "world"}, "not a token file")
    refused("field.dtok", tensors, {**meta, "height": "16"}, "'height' must be int")
    truncated = tmp_path / "truncated.dtok"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match="truncated.dtok is not a readable token file"):
        read_token_file(truncated)
