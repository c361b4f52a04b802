"""`generate --image/--length`, `extend` and `interpolate` end to end on a tiny masked-context model folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from vidfusion.cli import main
from vidfusion.diffusion.schedule import COGVIDEOX_5B_SCHEDULE
from vidfusion.io.pretrained import Components, save_pretrained
from vidfusion.io.video import read_video, write_video
from vidfusion.models.text_encoder import load_text_encoder, minilm_dir
from vidfusion.models.transformer import CogVideoXTransformer, tiny_config
from vidfusion.models.vae import CogVideoXVAE, tiny_random_config


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    vae = CogVideoXVAE(tiny_random_config(sample_height=32, sample_width=32)).eval()
    config = tiny_config("cogvideox-5b", in_channels=9, out_channels=4, ofs_embed_dim=24, text_embed_dim=384,
                         max_text_seq_length=8, sample_height=4, sample_width=4, sample_frames=9)
    text = load_text_encoder(minilm_dir(), minilm_dir(), 8, torch.device("cpu"))
    folder = tmp_path_factory.mktemp("ctx") / "model"
    save_pretrained(Components(CogVideoXTransformer(config).eval(), vae, text, COGVIDEOX_5B_SCHEDULE,
                               defaults={"num_steps": 2, "guidance_scale": 3.0, "fps": 8}), folder)
    return folder


def frames_of(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_generate_length_and_image(model, tmp_path, capsys):
    assert main(["generate", "a red circle", "--model", str(model), "--length", "17", "-o", f"{tmp_path}/long/",
                 "-q"]) == 0
    assert frames_of(tmp_path / "long").shape == (17, 32, 32, 3)
    image = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    assert main(["generate", "a red circle", "--model", str(model), "--image", str(tmp_path / "in.png"),
                 "--context-guidance", "1.5", "-o", f"{tmp_path}/i2v/", "-q"]) == 0
    assert frames_of(tmp_path / "i2v").shape == (9, 32, 32, 3)
    assert main(["generate", "a red circle", "--model", str(model), "--length", "17", "--context-frames", "3",
                 "-o", f"{tmp_path}/x.mp4"]) == 2
    assert "--context-frames 3 must be 4s + 1" in capsys.readouterr().err


def test_interpolate_and_extend_commands(model, tmp_path, capsys):
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    write_video(clip, tmp_path / "keys.mp4", fps=8)
    assert main(["interpolate", str(tmp_path / "keys.mp4"), "--model", str(model), "-x", "4", "-o", f"{tmp_path}/x4.mp4", "-q"]) == 0
    out, fps = read_video(tmp_path / "x4.mp4")
    assert out.shape == (17, 32, 32, 3) and fps == 32
    keys, _ = read_video(tmp_path / "keys.mp4")
    assert np.abs(out[::4].astype(int) - keys.astype(int)).mean() < 12  # keys copied (up to mp4 coding)
    assert "5 -> 17 frames, 8 -> 32 fps" in capsys.readouterr().out

    assert main(["extend", str(tmp_path / "keys.mp4"), "more", "--model", str(model), "--add", "4", "-o", f"{tmp_path}/ext.mp4",
                 "-q"]) == 0
    assert read_video(tmp_path / "ext.mp4")[0].shape[0] == 9
    write_video(clip[:3], tmp_path / "short.mp4", fps=8)
    assert main(["extend", str(tmp_path / "short.mp4"), "--model", str(model), "-o", f"{tmp_path}/e.mp4"]) == 2
    assert "has 3 frames, fewer than the 5 context frames" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert main(["interpolate", str(tmp_path / "bad.mp4"), "--model", str(model), "-o", f"{tmp_path}/y.mp4"]) == 2
    assert "bad.mp4" in capsys.readouterr().err
    assert main(["interpolate", str(tmp_path / "keys.mp4"), "-x", "3", "-o", f"{tmp_path}/y.mp4"]) == 2
    assert "power of 4" in capsys.readouterr().err


def test_context_commands_refuse_a_plain_model(tmp_path, capsys):
    write_video(np.zeros((5, 32, 32, 3), dtype=np.uint8), tmp_path / "v.mp4", fps=8)
    torch.manual_seed(0)
    vae = CogVideoXVAE(tiny_random_config(sample_height=32, sample_width=32)).eval()
    config = tiny_config("cogvideox-5b", text_embed_dim=384, max_text_seq_length=8, sample_height=4, sample_width=4,
                         sample_frames=9)
    text = load_text_encoder(minilm_dir(), minilm_dir(), 8, torch.device("cpu"))
    save_pretrained(Components(CogVideoXTransformer(config).eval(), vae, text, COGVIDEOX_5B_SCHEDULE), tmp_path / "m")
    assert main(["interpolate", str(tmp_path / "v.mp4"), "--model", str(tmp_path / "m"), "-o", f"{tmp_path}/y.mp4"]) == 2
    assert "needs a masked-context model" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(tmp_path / "m"), "--length", "17", "-o",
                 f"{tmp_path}/z.mp4"]) == 2
    assert "masked-context model" in capsys.readouterr().err


def test_context_guidance_comes_from_the_flag_else_the_model_else_off():
    from argparse import Namespace
    from types import SimpleNamespace

    from vidfusion.cli_context import _context_guidance

    tuned = SimpleNamespace(defaults={"context_guidance": 2.0})
    assert _context_guidance(Namespace(context_guidance=None), tuned) == 2.0
    assert _context_guidance(Namespace(context_guidance=1.5), tuned) == 1.5
    assert _context_guidance(Namespace(context_guidance=None), SimpleNamespace(defaults={})) == 1.0


def test_generate_step_cache_and_fp8_flags(model, tmp_path, capsys):
    def run(*flags):
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        assert main(["generate", "a red circle", "--model", str(model), "--steps", "4", "-o", f"{out}/", "-q",
                     *flags]) == 0
        return frames_of(out)

    exact = run()
    assert np.array_equal(run("--step-cache", "0"), exact)  # threshold 0 never skips
    assert not np.array_equal(run("--step-cache", "1e9"), exact)  # every step after the first reuses blocks 1..
    # fp8 block linears (inner dim 32, MLP 128: all multiples of 16, so all convert): close to exact, not equal
    fp8 = run("--fp8").astype(float)
    assert not np.array_equal(fp8, exact)
    assert np.abs(fp8 - exact).mean() < 0.1 * np.abs(exact.astype(float) - exact.mean()).mean()
    assert main(["generate", "a red circle", "--model", str(model), "--step-cache", "0.1", "--gpus", "2",
                 "-o", f"{tmp_path}/x.mp4"]) == 2
    assert "--step-cache 0.1 needs one process" in capsys.readouterr().err


def test_interpolation_guidance_comes_from_flags_then_the_folder_then_the_general_defaults():
    import argparse
    from types import SimpleNamespace

    from vidfusion.cli_context import _interpolation_guidance
    from vidfusion.io.pretrained import read_defaults

    def args(guidance=None, context_guidance=None):
        return argparse.Namespace(guidance=guidance, context_guidance=context_guidance)

    tuned = SimpleNamespace(defaults={"guidance_scale": 6.0, "context_guidance": 2.0,
                                      "interpolation_guidance_scale": 1.0, "interpolation_context_guidance": 1.0})
    assert _interpolation_guidance(args(), tuned) == (1.0, 1.0)
    assert _interpolation_guidance(args(4.0, 3.0), tuned) == (4.0, 3.0)
    general = SimpleNamespace(defaults={"guidance_scale": 6.0, "context_guidance": 2.0})
    assert _interpolation_guidance(args(), general) == (6.0, 2.0)
    assert _interpolation_guidance(args(), SimpleNamespace(defaults={})) == (6.0, 1.0)  # CogVideoX's fallbacks
    # the shipped model interpolates unguided (docs/context.md: +0.91 dB over CFG 6 / context 2 on 50 clips)
    from vidfusion.cli import SHIPPED_MODEL

    assert _interpolation_guidance(args(), SimpleNamespace(defaults=read_defaults(SHIPPED_MODEL))) == (1.0, 1.0)
