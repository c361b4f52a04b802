"""Curation's optional parts: written clips, the caption plug-in (with a stand-in captioner: no VLM weights exist
offline) and the CLIP aesthetic plug-in (with a tiny random CLIP built here), and a file damaged mid-stream."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from test_curation import FPS, scene, write
from test_curation_runner import SETTINGS
from vidfusion.data.curation import captions, runner
from vidfusion.data.curation.config import ShotConfig, config_from_dict
from vidfusion.data.curation.shots import detect_shots
from vidfusion.io.video import read_video


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one")
    write(np.concatenate([scene(s, 60) for s in range(2)]), folder / "two_shots.mp4")
    return folder / "two_shots.mp4"


def test_written_clips_hold_the_clip_frames(video, tmp_path):
    runner.curate([str(video)], tmp_path, config_from_dict({**SETTINGS, "clips": {"write": True}}), progress=False)
    manifest = runner.read_manifest(tmp_path)
    assert [(r["start"], r["end"]) for r in manifest] == [(0, 58), (62, 120)]
    source, _ = read_video(video)
    for row in manifest:
        assert Path(row["clip_path"]).parent == tmp_path / "clips"
        frames, fps = read_video(row["clip_path"])
        assert fps == FPS and len(frames) == row["end"] - row["start"]
        assert np.abs(frames.astype(int) - source[row["start"] : row["end"]]).mean() < 3  # crf 18 re-encode


def test_caption_plugin_fills_the_manifest(video, tmp_path, monkeypatch):
    def fake_loader(folder, prompt, max_new_tokens):
        assert (folder, max_new_tokens) == (str(tmp_path), 48)
        return lambda rgb: f"mean {rgb.mean():.1f}"

    monkeypatch.setattr(captions, "load_captioner", fake_loader)
    settings = {**SETTINGS, "captions": {"model": str(tmp_path)}}
    summary = runner.curate([str(video)], tmp_path / "out", config_from_dict(settings), progress=False)
    source, _ = read_video(video)
    manifest = runner.read_manifest(tmp_path / "out")
    assert [r["caption"] for r in manifest] == [f"mean {source[(r['start'] + r['end']) // 2].mean():.1f}"
                                                 for r in manifest]
    assert summary["captions"] == "model" and "EMPTY" not in (tmp_path / "out" / "report" / "report.md").read_text()


def tiny_clip(folder: Path) -> None:
    """A randomly initialised CLIP with a character-level tokenizer, saved in the transformers layout."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz,":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=CLIPTokenizer(str(folder / "vocab.json"),
                                                                  str(folder / "merges.txt"))).save_pretrained(folder)


def test_aesthetic_plugin_scores_with_clip(video, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import CLIPModel, CLIPProcessor

    from vidfusion.data.curation.quality import AESTHETIC_PROMPTS, aesthetic_score

    folder = tmp_path / "clip"
    tiny_clip(folder)
    frame = read_video(video, max_frames=1)[0][0]
    # The same number from CLIP's parts: softmax over scaled cosine similarities, the first prompt is "beautiful".
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        pixels = processor(images=[frame], return_tensors="pt")
        image = model.visual_projection(model.vision_model(**pixels).pooler_output)
        tokens = processor(text=list(AESTHETIC_PROMPTS), return_tensors="pt", padding=True)
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        image, text = (torch.nn.functional.normalize(t, dim=-1) for t in (image, text))
        expected = (model.logit_scale.exp() * image @ text.T).softmax(dim=-1)[0, 0].item()
    assert aesthetic_score(frame, str(folder)) == pytest.approx(expected, abs=1e-5)

    settings = {**SETTINGS, "quality": {**SETTINGS["quality"], "aesthetic_model": str(folder)},
                "filters": {**SETTINGS["filters"], "min_aesthetic": 0.999}}
    summary = runner.curate([str(video)], tmp_path / "out", config_from_dict(settings), progress=False)
    judged = pq.read_table(tmp_path / "out" / "judged.parquet").to_pylist()
    assert all(0.0 < r["aesthetic"] < 0.999 and r["dropped_by"] == ["low_aesthetic"] for r in judged)
    assert summary["kept"] == 0 and summary["aesthetic"] == "model"


def test_damage_mid_stream_keeps_the_frames_before_it(tmp_path):
    path = write(np.concatenate([scene(s, 60) for s in range(3)]), tmp_path / "damaged.mp4")
    data = bytearray(Path(path).read_bytes())
    lo, hi = len(data) * 4 // 10, len(data) * 6 // 10
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    Path(path).write_bytes(bytes(data))
    out = detect_shots(path, FPS, ShotConfig())
    assert "decoding failed at frame" in out["shot_error"] and 0 < out["decoded_frames"] < 180
    assert out["shot_ends"][-1] == out["decoded_frames"]

    summary = runner.curate([path], tmp_path / "out", config_from_dict(SETTINGS), progress=False)
    assert [Path(r["path"]).name for r in summary["decode_errors"]] == ["damaged.mp4"]
    assert all(r["end"] <= out["decoded_frames"] for r in runner.read_manifest(tmp_path / "out"))
    assert "damaged.mp4: decoding failed" in (tmp_path / "out" / "report" / "report.md").read_text()
