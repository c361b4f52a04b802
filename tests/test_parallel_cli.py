"""`vidfusion generate --gpus 2` (torchrun re-exec, two gloo CPU processes) against the single-process output.

Sequence parallel (the masked-context model) and CFG parallel (a plain model) reorder float sums (attention over a
permuted token order, matmuls over fewer rows, one thread per process), so the latents differ from the single-process
ones in the last bits; after decoding and rounding to uint8 the frames agree within 1/255 per pixel.
"""

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from vidfusion.cli import main
from vidfusion.diffusion.schedule import COGVIDEOX_5B_SCHEDULE
from vidfusion.io.pretrained import Components, load_pretrained, save_pretrained
from vidfusion.models.text_encoder import load_text_encoder, minilm_dir
from vidfusion.models.transformer import CogVideoXTransformer, tiny_config
from vidfusion.models.vae import CogVideoXVAE, tiny_random_config
from vidfusion.pipelines.text_to_video import T2VRequest, text_to_video


def _model_folder(folder, context: bool):
    torch.manual_seed(0)
    vae = CogVideoXVAE(tiny_random_config(sample_height=32, sample_width=32)).eval()
    extra = {"in_channels": 9, "ofs_embed_dim": 24} if context else {}
    config = tiny_config("cogvideox-5b", out_channels=4, text_embed_dim=384, max_text_seq_length=8, sample_height=4,
                         sample_width=4, sample_frames=9, **extra)  # 2 heads: 2-way sequence parallel
    text = load_text_encoder(minilm_dir(), minilm_dir(), 8, torch.device("cpu"))
    save_pretrained(Components(CogVideoXTransformer(config).eval(), vae, text, COGVIDEOX_5B_SCHEDULE,
                               defaults={"num_steps": 2, "guidance_scale": 3.0, "fps": 8}), folder)
    return folder


@pytest.fixture(scope="module")
def context_model(tmp_path_factory):
    return _model_folder(tmp_path_factory.mktemp("ctx") / "model", context=True)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    return _model_folder(tmp_path_factory.mktemp("plain") / "model", context=False)


def frames_of(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]).astype(int)


def generate(model, out, *flags):
    return main(["generate", "a red circle", "--model", str(model), "-o", f"{out}/", "-q", "--steps", "2",
                 "--device", "cpu", *flags])


def check_parallel_matches(model, tmp_path, capfd, flags, layout):
    assert generate(model, tmp_path / "one", *flags) == 0
    assert generate(model, tmp_path / "two", *flags, "--gpus", "2") == 0
    printed = capfd.readouterr().out
    assert printed.count("wrote ") == 2 and f"2 processes (CFG x sequence {layout})" in printed  # rank 0 only
    one, two = frames_of(tmp_path / "one"), frames_of(tmp_path / "two")
    assert one.shape == two.shape == (9, 32, 32, 3)
    assert np.abs(one - two).max() <= 1
    # The tolerance is far below what a wrong result would show: another seed moves pixels by much more.
    assert generate(model, tmp_path / "seed", *flags, "--seed", "1") == 0
    assert np.abs(frames_of(tmp_path / "seed") - one).max() > 10


def test_masked_context_model_sequence_parallel(context_model, tmp_path, capfd):
    # --image with context guidance: three branches per step, split by sequence parallel.
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    flags = ["--image", str(tmp_path / "in.png"), "--context-guidance", "1.5"]
    check_parallel_matches(context_model, tmp_path, capfd, flags, "1 x 2")


def test_plain_model_cfg_parallel(plain_model, tmp_path, capfd):
    check_parallel_matches(plain_model, tmp_path, capfd, [], "2 x 1")


def counting_wrapper(calls: list):
    def wrap(model_fn):
        def counted(x, c, t):
            calls.append(x.shape[0])
            return model_fn(x, c, t)
        return counted
    return wrap


def test_wrap_model_fn_hook(context_model, plain_model):
    """The hook sees every step's call (one guided batch of 2), and a pass-through wrapper changes nothing."""
    request = T2VRequest("a red circle", num_steps=2, guidance_scale=3.0)
    for folder in (context_model, plain_model):
        components = load_pretrained(folder)
        calls = []
        plain = text_to_video(components, request, progress=False)
        assert torch.equal(text_to_video(components, request, progress=False, wrap_model_fn=counting_wrapper(calls)),
                           plain)
        assert calls == [2, 2]


def test_relaunch_command_and_exit_code(plain_model, tmp_path, monkeypatch):
    seen = []

    def fake_run(command, check):
        seen.append(command)
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert generate(plain_model, tmp_path / "x", "--gpus", "2", "--seed", "5") == 3  # the workers' exit code
    command = seen[0]
    assert command[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    assert "--gpus" not in command and command[command.index("--seed") + 1] == "5"


def test_bad_attention_and_gpus(plain_model, tmp_path, capfd):
    assert generate(plain_model, tmp_path / "x", "--attention", "bogus") == 2
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "'bogus'" in err and "auto, cudnn, flash, efficient, math" in err
    assert generate(plain_model, tmp_path / "x", "--gpus", "3") == 2  # 3 processes shard 2 heads 3 ways
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "use --gpus 2 or 4" in err
    assert not (tmp_path / "x").exists()


def test_vae_tiles_split_across_processes(plain_model, tmp_path, capfd):
    """--vae-tiling with --gpus 2: each process decodes some of the tiles, and the video is the single-process
    tiled one (within 1/255, as above); tiling is really on (the untiled video differs)."""
    flags = ["--vae-tiling"]
    assert generate(plain_model, tmp_path / "one", *flags) == 0
    assert generate(plain_model, tmp_path / "two", *flags, "--gpus", "2") == 0
    assert generate(plain_model, tmp_path / "untiled") == 0
    capfd.readouterr()
    one, two, untiled = (frames_of(tmp_path / name) for name in ("one", "two", "untiled"))
    assert one.shape == two.shape and np.abs(one - two).max() <= 1
    assert one.shape != untiled.shape or np.abs(one - untiled).max() > 10


def test_vae_flags(plain_model, tmp_path, capfd):
    import argparse

    from vidfusion.cli import _configure_vae

    assert generate(plain_model, tmp_path / "x", "--vae-frame-slice", "2") == 2
    assert "--vae-frame-slice 2 needs --vae-fuse" in capfd.readouterr().err
    assert not (tmp_path / "x").exists()
    vae = CogVideoXVAE(tiny_random_config())
    _configure_vae(vae, argparse.Namespace(vae_tiling=True, vae_fuse=True, vae_frame_slice=2))
    assert vae.use_tiling and vae.map_tiles is None  # one process: tiles stay here
    assert vae.decoder.frame_slice == 2 and vae.decoder.fuse is not None
