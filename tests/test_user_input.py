"""Bad settings and damaged files given to the commands: refused first, in a line or two naming
the file or the setting, with no traceback (unless DELTAWORLD_DEBUG=1) and no output written."""

import pytest
import torch
from omegaconf import OmegaConf

from deltaworld.cli import main as cli_main
from deltaworld.eval.sample import run_sample

SAMPLE = {
    "world_ckpt": "unused.safetensors",
    "video": None,
    "context": 4,
    "horizon": 3,
    "samples": 20,
    "stride": 0.2,
    "start": None,
    "seed": 0,
    "device": "cpu",
    "figure_rows": 8,
}


def test_figures_are_capped_whatever_the_horizon(tmp_path):
    from PIL import Image

    from deltaworld.eval.figures import MAX_COLUMNS, MAX_ROWS, image_grid

    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    path = image_grid([(f"row {r}", [image] * 200) for r in range(100)], tmp_path / "big.png")
    width, height = Image.open(path).size
    capped = image_grid([(f"row {r}", [image] * MAX_COLUMNS) for r in range(MAX_ROWS)], tmp_path / "cap.png")
    assert (width, height) == Image.open(capped).size and width * height < 15e6


@pytest.mark.parametrize("setting", ["horizon=0", "context=0", "samples=0", "stride=0", "start=-1", "context=2.5"])
def test_sample_refuses_settings_before_anything_is_read_or_written(tmp_path, setting):
    key, value = setting.split("=")
    cfg = OmegaConf.create(
        {**SAMPLE, key: float(value) if "." in value else int(value), "out_dir": str(tmp_path / "out")}
    )
    with pytest.raises(ValueError, match=f"{key}="):
        run_sample(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04" + b"\x00" * 60, None])
def test_a_damaged_or_missing_model_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch, content):
    monkeypatch.delenv("DELTAWORLD_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    path = tmp_path / "world.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["sample", f"world_ckpt={path}", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(path) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "out").exists()


def test_debug_switch_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DELTAWORLD_DEBUG", "1")
    with pytest.raises(SystemExit):
        cli_main(["sample", f"world_ckpt={tmp_path / 'missing.safetensors'}", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert "Traceback" in err and "model file not found" in err


def test_a_zero_byte_resume_checkpoint_is_named(tmp_path, capsys, monkeypatch):
    from test_training import FAST

    from deltaworld.tokenizer.fit import run_training
    from deltaworld.tokenizer.run_folder import RunFolderError

    from conftest import compose_train

    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(RunFolderError, match="empty.ckpt does not load"):
        run_training(compose_train([*FAST, f"resume={empty}"], tmp_path / "run"))
    torch.save({"nothing": 1}, tmp_path / "foreign.ckpt")
    with pytest.raises(RunFolderError, match="not a training checkpoint"):
        run_training(compose_train([*FAST, f"resume={tmp_path / 'foreign.ckpt'}"], tmp_path / "run"))


def test_a_pixel_export_given_as_a_world_model_is_named_by_kind(tmp_path, capsys, monkeypatch):
    from test_pixel import tiny_pixel

    from deltaworld.tokenizer.checkpoint import export_safetensors

    monkeypatch.delenv("DELTAWORLD_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    config = {"patch_size": 4, "dim": 32, "num_heads": 2, "depth": 1, "num_tokens": 2, "token_dim": 8}
    path = export_safetensors(
        tiny_pixel(diffusion=None),
        tmp_path / "pixel.safetensors",
        {"kind": "pixel_tokenizer", "format_version": 1, "frame_size": 16, "tokenizer": config},
    )
    with pytest.raises(SystemExit):
        cli_main(["sample", f"world_ckpt={path}", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert "pixel.safetensors is a pixel_tokenizer export, not a world export" in err


def test_a_context_of_repeated_frames_is_refused_naming_the_video(tmp_path):
    from test_data import grey_frames

    from deltaworld.data.video import write_video
    from deltaworld.eval.sample import check_distinct_context, video_clip

    path = tmp_path / "two_frames.mp4"
    write_video(path, grey_frames(3, 16, 16), fps=2)  # 3 frames over 1.5 s
    clip = video_clip(str(path), frames=5, context=4, stride=0.2, start=0.0, size=16)
    with pytest.raises(ValueError, match=r"two_frames.mp4: context frames \[1, 2\] repeat"):
        check_distinct_context(clip["timestamps"][None, :4], clip["frames"][None, :4], str(path))
