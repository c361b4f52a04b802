"""Whole-model folders and text-to-video against diffusers' CogVideoXPipeline, the CLI end to end, and its errors.

A tiny random CogVideoX (T5 + transformer + VAE + scheduler) is written by diffusers' own save_pretrained; the same
folder drives both pipelines, so any difference is ours.
"""

import subprocess
import sys

import av
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from vidfusion.cli import main  # noqa: E402
from vidfusion.diffusion.schedule import COGVIDEOX_2B_SCHEDULE, COGVIDEOX_5B_SCHEDULE  # noqa: E402
from vidfusion.io.checkpoint import read_state_dict, save_state_dict  # noqa: E402
from vidfusion.io.pretrained import load_pretrained, save_pretrained  # noqa: E402
from vidfusion.models.transformer import tiny_config  # noqa: E402
from vidfusion.models.vae import tiny_random_config  # noqa: E402
from vidfusion.pipelines.text_to_video import T2VRequest, text_to_video  # noqa: E402

WORDS = "a red green blue circle square moving to the right left up down".split()
T5_DIM = 32


def tiny_t5():
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = transformers.T5Tokenizer(vocab=vocab, extra_ids=0)
    config = transformers.T5Config(vocab_size=len(vocab), d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   feed_forward_proj="gated-gelu", dropout_rate=0.0)
    torch.manual_seed(0)
    return tokenizer, transformers.T5EncoderModel(config).eval()


def randomise_(module, seed):
    """Random values everywhere (diffusers zero-initialises some layers, which would hide wiring bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def build_reference(folder, like="cogvideox-2b", scheduler="ddim"):
    tokenizer, t5 = tiny_t5()
    t_cfg = tiny_config(like, text_embed_dim=T5_DIM, max_text_seq_length=16, sample_height=8, sample_width=8,
                        sample_frames=9)
    transformer = diffusers.CogVideoXTransformer3DModel.from_config(t_cfg.to_dict()).eval()
    vae = diffusers.AutoencoderKLCogVideoX.from_config(tiny_random_config().to_dict()).eval()
    randomise_(transformer, 1)
    schedule = COGVIDEOX_2B_SCHEDULE if like == "cogvideox-2b" else COGVIDEOX_5B_SCHEDULE
    cls = diffusers.CogVideoXDDIMScheduler if scheduler == "ddim" else diffusers.CogVideoXDPMScheduler
    sched = cls.from_config(schedule.to_dict(cls.__name__))
    pipe = diffusers.CogVideoXPipeline(tokenizer=tokenizer, text_encoder=t5, vae=vae, transformer=transformer,
                                       scheduler=sched)
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref") / "tiny-cogvideox"
    return folder, build_reference(folder)


def assert_same_state(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_diffusers_folder_loads_with_our_loader(reference):
    folder, pipe = reference
    ours = load_pretrained(folder)
    assert_same_state(ours.transformer, pipe.transformer)
    assert_same_state(ours.vae, pipe.vae)
    assert_same_state(ours.text_encoder.model, pipe.text_encoder)
    assert ours.default_sampler == "ddim"
    for config, ref in ((ours.transformer.config, pipe.transformer.config), (ours.vae.config, pipe.vae.config)):
        for key, value in config.to_dict().items():
            if not key.startswith("_"):
                want = list(ref[key]) if isinstance(ref[key], tuple) else ref[key]
                got = list(value) if isinstance(value, tuple) else value
                assert got == want, key


def test_our_folder_loads_in_diffusers(reference, tmp_path):
    folder, pipe = reference
    ours = load_pretrained(folder)
    out = tmp_path / "ours"
    save_pretrained(ours, out, max_shard_bytes=20_000)  # force sharding of the transformer
    assert len(list((out / "transformer").glob("*.safetensors"))) > 1
    back = diffusers.CogVideoXPipeline.from_pretrained(out)
    assert_same_state(ours.transformer, back.transformer)
    assert_same_state(ours.vae, back.vae)
    assert_same_state(ours.text_encoder.model, back.text_encoder)
    assert type(back.scheduler).__name__ == "CogVideoXDDIMScheduler"
    ids = ours.text_encoder.tokenizer(["a red circle"]).input_ids
    assert back.tokenizer(["a red circle"]).input_ids == ids


@pytest.mark.parametrize("sampler,guidance,dynamic", [("ddim", 6.0, False), ("dpm", 4.0, True), ("ddim", 1.0, False)])
def test_text_to_video_matches_diffusers_pipeline(reference, sampler, guidance, dynamic):
    folder, pipe = reference
    if sampler == "dpm":
        pipe = diffusers.CogVideoXPipeline.from_pretrained(folder)
        pipe.scheduler = diffusers.CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    ours = load_pretrained(folder)
    kwargs = dict(num_frames=9, height=64, width=64, num_inference_steps=6, guidance_scale=guidance,
                  use_dynamic_cfg=dynamic)
    ref = pipe("a red circle moving to the right", negative_prompt="blue square", max_sequence_length=16,
               generator=torch.Generator().manual_seed(7), output_type="pt", **kwargs).frames[0]
    request = T2VRequest("a red circle moving to the right", negative_prompt="blue square", num_frames=9, height=64,
                         width=64, num_steps=6, guidance_scale=guidance, dynamic_cfg=dynamic, sampler=sampler, seed=7)
    video = text_to_video(ours, request, progress=False)
    assert video.shape == ref.shape == (9, 3, 64, 64)
    # diffusers' postprocess maps [-1, 1] to [0, 1]
    assert (video / 2 + 0.5 - ref).abs().max() < 1e-4


def test_cogvideox15_odd_latent_frames_pipeline(tmp_path):
    folder = tmp_path / "tiny15"
    pipe = build_reference(folder, like="cogvideox1.5-5b")
    ours = load_pretrained(folder)
    ref = pipe("a green square", num_frames=9, height=64, width=64, num_inference_steps=3, max_sequence_length=16,
               generator=torch.Generator().manual_seed(3), output_type="pt").frames[0]
    video = text_to_video(ours, T2VRequest("a green square", num_frames=9, height=64, width=64, num_steps=3, seed=3),
                          progress=False)
    assert video.shape == (9, 3, 64, 64)  # 3 latents -> 4 sampled (patch_size_t 2) -> first dropped -> 9 frames
    assert (video / 2 + 0.5 - ref).abs().max() < 1e-4


def test_cli_generate_end_to_end(reference, tmp_path):
    folder, _ = reference
    out = tmp_path / "clip.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "vidfusion.cli", "generate", "a red circle moving right", "-o", str(out),
         "--model", str(folder), "--frames", "9", "--height", "64", "--width", "48", "--steps", "3", "-q"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out} (9 frames, 64x48")
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9
    assert frames[0].shape == (64, 48, 3)


def test_cli_info_counts_parameters(reference, capsys):
    folder, pipe = reference
    assert main(["info", str(folder)]) == 0
    text = capsys.readouterr().out
    n_transformer = sum(p.numel() for p in pipe.transformer.parameters())
    n_vae = sum(p.numel() for p in pipe.vae.parameters())
    assert f"parameters: {n_transformer:,}" in text
    assert f"parameters: {n_vae:,}" in text
    assert "class: CogVideoXTransformer3DModel" in text


def run_cli_error(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_cli_errors_name_the_problem_and_fix(reference, tmp_path, capsys):
    folder, _ = reference
    gen = ["generate", "a red circle", "-o", str(tmp_path / "x.mp4"), "--steps", "1", "-q"]

    err = run_cli_error([*gen, "--model", str(tmp_path / "nowhere")], capsys)
    assert "does not exist" in err and "--model" in err

    err = run_cli_error([*gen, "--model", str(folder), "--frames", "10"], capsys)
    assert "4k+1" in err and "use 9 or 13" in err

    err = run_cli_error([*gen, "--model", str(folder), "--height", "70"], capsys)
    assert "multiple of 16" in err and "use 64" in err

    err = run_cli_error([*gen, "--model", str(folder), "--sampler", "euler"], capsys)
    assert "euler" in err and "ddim" in err and "dpm" in err

    err = run_cli_error(["generate", "   ", "--model", str(folder)], capsys)
    assert "prompt is empty" in err

    err = run_cli_error(["generate", "a red circle", "-o", str(tmp_path / "x.avi"), "--model", str(tmp_path / "none")],
                        capsys)
    assert "unknown suffix '.avi'" in err  # checked before the model folder, i.e. before any slow work

    # a missing weight: the first missing key is named
    broken = _copy_model(folder, tmp_path / "missing")
    state = read_state_dict(broken / "transformer")
    del state["proj_out.weight"]
    save_state_dict(state, broken / "transformer")
    err = run_cli_error([*gen, "--model", str(broken)], capsys)
    assert "'proj_out.weight' is missing" in err

    # a mis-shaped weight
    broken = _copy_model(folder, tmp_path / "shape")
    state = read_state_dict(broken / "vae")
    key = next(k for k in state if k.endswith("conv_in.conv.weight"))
    state[key] = state[key][:, :2]
    save_state_dict(state, broken / "vae")
    err = run_cli_error([*gen, "--model", str(broken)], capsys)
    assert repr(key) in err and "has shape" in err

    # pickle-only weights are refused, not unpickled
    broken = _copy_model(folder, tmp_path / "pickle")
    state = read_state_dict(broken / "transformer")
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    torch.save(state, broken / "transformer" / "diffusion_pytorch_model.bin")
    err = run_cli_error([*gen, "--model", str(broken)], capsys)
    assert "pickle" in err and "safetensors" in err

    # a config that is not JSON
    broken = _copy_model(folder, tmp_path / "json")
    (broken / "vae" / "config.json").write_text("{not json")
    err = run_cli_error([*gen, "--model", str(broken)], capsys)
    assert "not valid JSON" in err
