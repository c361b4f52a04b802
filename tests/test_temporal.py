"""Temporal metrics on videos whose answers are known: static, translating, flickering, scene-changing."""

import json

import numpy as np
import pytest

from vidfusion.cli import main
from vidfusion.data.world import eval_split
from vidfusion.errors import VidFusionError
from vidfusion.evaluation.temporal import (
    flow_metrics,
    format_table,
    frame_consistency,
    frame_features,
    load_feature_encoder,
    temporal_scores,
)
from vidfusion.io.video import write_video

SIZE = 96


@pytest.fixture(scope="module")
def encoder():
    return load_feature_encoder()


def periodic_texture(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """Smooth random RGB texture that tiles (low-passed in the frequency domain), so np.roll is a true translation."""
    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)
    blur = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) / (2 * 0.06**2))[..., None]
    smooth = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size, 3)), axes=(0, 1)) * blur, axes=(0, 1)).real
    smooth = (smooth - smooth.mean()) / smooth.std()
    return np.clip(128 + 45 * smooth, 0, 255).astype(np.uint8)


def static_video(frames: int = 9) -> np.ndarray:
    return np.repeat(periodic_texture()[None], frames, axis=0)


def translating_video(shift: int, frames: int = 9) -> np.ndarray:
    return np.stack([np.roll(periodic_texture(), shift * t, axis=1) for t in range(frames)])


def flickering_video(amplitude: int = 40, frames: int = 9) -> np.ndarray:
    base = static_video(frames).astype(np.int16)
    signs = np.where(np.arange(frames) % 2 == 0, 1, -1)[:, None, None, None]
    return np.clip(base + amplitude * signs, 0, 255).astype(np.uint8)


def test_static_video_is_consistent_without_flicker_or_motion(encoder):
    scores = temporal_scores(static_video(), encoder)
    assert scores["frame_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert scores["flicker"] < 0.05 and scores["motion"] < 0.05 and scores["frames"] == 9


@pytest.mark.parametrize("shift", [2, 5])
def test_translation_shows_as_motion_not_flicker(shift):
    video = translating_video(shift)
    scores = flow_metrics(video)
    assert scores["motion"] == pytest.approx(shift, rel=0.05)
    unwarped = np.abs(np.diff(video.astype(np.float32), axis=0)).mean()
    assert scores["flicker"] < 0.05 * unwarped and scores["flicker"] < 1.0


def test_flickering_video_has_high_flicker_and_little_motion():
    scores = flow_metrics(flickering_video(40))
    assert scores["flicker"] > 60  # the brightness jumps by 80 levels; clipping at 0/255 takes a little off
    assert scores["motion"] < 0.5
    assert flow_metrics(flickering_video(10))["flicker"] < scores["flicker"] / 2


def test_consistency_drops_when_the_scene_changes(encoder):
    clips = [s.video for s in eval_split("val", 4)]
    steady = frame_consistency(frame_features(clips[0][:9], encoder))
    cut = frame_consistency(frame_features(np.concatenate([clips[0][:3], clips[1][:3], clips[2][:3]]), encoder))
    assert steady > 0.95 and cut < steady - 0.05
    features = frame_features(clips[0][:5], encoder)
    assert features.shape == (5, 16 * 4 * 4)


def test_bad_input_is_a_one_line_error(encoder):
    with pytest.raises(VidFusionError, match="at least 2 frames"):
        flow_metrics(static_video(1))
    with pytest.raises(VidFusionError, match="uint8 numpy array"):
        frame_features(static_video().astype(np.float32), encoder)


def test_cli_eval_temporal_prints_a_table_and_writes_json(tmp_path, capsys):
    steady, flicker = tmp_path / "steady.mp4", tmp_path / "flicker.mp4"
    write_video(static_video(), steady)
    write_video(flickering_video(40), flicker)
    out = tmp_path / "temporal.json"
    assert main(["eval", "temporal", str(steady), str(flicker), "--json", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "consistency" in printed and "steady.mp4" in printed and "mean" in printed
    result = json.loads(out.read_text())
    rows = {r["video"].split("/")[-1]: r for r in result["videos"]}
    assert rows["steady.mp4"]["flicker"] < 1.5 and rows["flicker.mp4"]["flicker"] > 20
    assert rows["steady.mp4"]["frame_consistency"] > 0.999 and rows["steady.mp4"]["motion"] < 0.1
    mean_flicker = (rows["steady.mp4"]["flicker"] + rows["flicker.mp4"]["flicker"]) / 2
    assert result["mean"]["flicker"] == pytest.approx(mean_flicker)
    assert main(["eval", "temporal", str(tmp_path / "missing.mp4")]) == 2
    assert "missing.mp4 does not exist" in capsys.readouterr().err
    assert format_table(result["videos"][:1]).count("\n") == 1  # one video: no mean line
