"""Curation stages on tiny synthetic videos: probe reasons, cuts and fades, clip planning, motion, quality scores,
filters and buckets, config errors. Helpers here (`scene`, `pan`, `write`) are shared with the other curation tests."""

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vidfusion.data.curation.clips import plan_clips
from vidfusion.data.curation.config import (ClipConfig, CurateConfig, MotionConfig, ProbeConfig, ShotConfig,
                                            config_from_dict, load_config)
from vidfusion.data.curation.filters import assign_bucket, build_manifest
from vidfusion.data.curation.motion import score_clips as motion_scores
from vidfusion.data.curation.probe import probe_file
from vidfusion.data.curation.quality import blockiness, frame_indices, sharpness, text_area_heuristic
from vidfusion.data.curation.runner import find_inputs
from vidfusion.data.curation.shots import detect_shots, fade_spans, split_shots
from vidfusion.errors import VidFusionError
from vidfusion.io.video import write_video

H, W, FPS = 96, 128, 24


def texture(seed: int, height: int = H, width: int = 3 * W) -> np.ndarray:
    """A smooth random colour texture, wide enough to pan across; each seed has its own colours."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 8, width // 8, 3)).astype(np.uint8)
    image = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    tint = rng.uniform(0.3, 1.0, 3)
    return np.clip(image * tint + rng.uniform(0, 60, 3), 0, 255).astype(np.uint8)


def pan(image: np.ndarray, frames: int, speed: int, height: int = H, width: int = W) -> np.ndarray:
    """A camera panning right across `image` at `speed` px per frame."""
    return np.stack([image[:height, i * speed : i * speed + width] for i in range(frames)])


def scene(seed: int, frames: int) -> np.ndarray:
    return pan(texture(seed), frames, speed=1)


def write(frames: np.ndarray, path: Path, fps: float = FPS) -> str:
    write_video(frames, path, fps=fps)
    return str(path)


# -------------------------------------------------------------------------------------------------------- probe


def write_vfr(path: Path) -> None:
    """H.264 with explicit pts that alternate 1/30 s and 1/10 s apart."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        pts = 0
        for i, rgb in enumerate(scene(0, 30)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 33 if i % 2 else 100
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_probe_records_reasons_for_bad_inputs(tmp_path):
    good = write(scene(0, 48), tmp_path / "good.mp4")
    data = Path(good).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) * 6 // 10])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video at all\n" * 20)
    write_vfr(tmp_path / "vfr.mp4")
    with av.open(str(tmp_path / "audio.m4a"), "w") as container:  # a real container with no video stream
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())

    cfg = ProbeConfig()
    ok = probe_file(good, cfg)
    assert ok["ok"] and ok["reason"] == ""
    assert (ok["num_frames"], ok["fps"], ok["width"], ok["height"], ok["rotation"]) == (48, 24.0, W, H, 0)
    assert ok["duration"] == pytest.approx(2.0) and ok["codec"] == "h264"
    expected = {"truncated.mp4": "truncated", "empty.mp4": "empty file", "notes.mp4": "not a video",
                "vfr.mp4": "variable frame rate", "audio.m4a": "no video stream", "missing.mp4": "cannot read"}
    for name, reason in expected.items():
        row = probe_file(str(tmp_path / name), cfg)
        assert not row["ok"] and reason in row["reason"], (name, row["reason"])


def test_probe_reads_rotation(tmp_path):
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.set_display_rotation(90)
        for rgb in scene(0, 12):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    row = probe_file(str(path), ProbeConfig())
    assert row["ok"] and row["rotation"] in (90, 270) and (row["width"], row["height"]) == (H, W)


# -------------------------------------------------------------------------------------------------------- shots


def fade(a: np.ndarray, b: np.ndarray, ramp: int, black: int) -> np.ndarray:
    down = [a[-1] * (1 - (i + 1) / ramp) for i in range(ramp)]
    up = [b[0] * ((i + 1) / (ramp + 1)) for i in range(ramp)]
    return np.stack(down + [np.zeros_like(a[0])] * black + up).astype(np.uint8)


def test_cuts_and_fades_on_synthetic_shots(tmp_path):
    # 3 hard cuts, then a fade out/in through black, then one more cut.
    parts = [scene(1, 30), scene(2, 25), scene(3, 30), scene(4, 30)]
    a, b = scene(5, 30), scene(6, 30)
    parts += [a, fade(a, b, ramp=8, black=6), b, scene(7, 30)]
    path = write(np.concatenate(parts), tmp_path / "shots.mp4")
    starts = np.cumsum([0] + [len(p) for p in parts])
    out = detect_shots(path, FPS, ShotConfig())
    assert out["shot_error"] == "" and out["decoded_frames"] == starts[-1]
    hard = [starts[1], starts[2], starts[3], starts[4], starts[7]]
    assert len(out["cuts"]) == len(hard) and all(abs(c - t) <= 1 for c, t in zip(out["cuts"], hard)), out["cuts"]
    # The fade span covers the black frames and the ramps (the first ramp frame is still bright enough to pass).
    assert len(out["fade_starts"]) == 1
    assert starts[5] - 1 <= out["fade_starts"][0] <= starts[5] + 2
    assert starts[6] - 1 <= out["fade_ends"][0] <= starts[6] + 1
    shots = list(zip(out["shot_starts"], out["shot_ends"]))
    assert len(shots) == 7 and shots[0][0] == 0 and shots[-1][1] == starts[-1]
    assert not any(s < out["fade_ends"][0] and e > out["fade_starts"][0] for s, e in shots)  # no shot crosses it


def test_dissolve_found_by_the_slow_passes_only(tmp_path):
    rng = np.random.default_rng(0)
    a, b = texture(1)[:, :W].astype(float), texture(2)[:, :W].astype(float)
    mix = [a * (1 - (i + 1) / 13) + b * ((i + 1) / 13) for i in range(12)]  # a 12-frame cross-fade at frame 60
    frames = np.stack([a] * 60 + mix + [b] * 60) + rng.integers(-3, 4, (132, H, W, 3))  # sensor noise
    path = write(np.clip(frames, 0, 255).astype(np.uint8), tmp_path / "dissolve.mp4")
    cuts = detect_shots(path, FPS, ShotConfig())["cuts"]
    assert len(cuts) == 1 and 60 <= cuts[0] < 72
    assert detect_shots(path, FPS, ShotConfig(slow_fps=[]))["cuts"] == []  # the full-rate pass misses it


def test_fade_spans_and_split_shots():
    brightness = np.array([100, 100, 80, 40, 5, 2, 3, 30, 60, 90, 90, 90], dtype=float)
    assert fade_spans(brightness, [5], level=12) == [(1, 10)]
    assert fade_spans(brightness, [1], level=12) == []  # a mark away from any black frame is no fade
    assert split_shots(12, [3], [(6, 8)]) == [(0, 3), (3, 6), (8, 12)]


# -------------------------------------------------------------------------------------------------------- clips


def test_plan_clips_trims_cut_sides_drops_short_and_splits_long():
    row = {"path": "/v/a.mp4", "fps": 10.0, "decoded_frames": 300, "cuts": [100, 130], "fade_starts": [250],
           "fade_ends": [260], "shot_starts": [0, 100, 130, 260], "shot_ends": [100, 130, 250, 300],
           "shot_error": "", "ok": True, "width": 64, "height": 48}
    clips = plan_clips(row, ClipConfig(min_seconds=2.0, max_seconds=5.0, trim_frames=2))
    spans = [(c["start"], c["end"]) for c in clips]
    # [0, 98): 98 frames > 50 -> 2 equal parts; [102, 128): 26 >= 20 frames, kept; [132, 248) -> 3 parts;
    # [262, 300): trimmed after the fade, not at the end of the file.
    assert spans == [(0, 49), (49, 98), (102, 128), (132, 171), (171, 209), (209, 248), (262, 300)]
    assert all(c["end"] - c["start"] <= 50 for c in clips)
    assert clips[0]["start_s"] == 0.0 and clips[0]["end_s"] == 4.9 and "cuts" not in clips[0]
    assert len({c["clip_id"] for c in clips}) == len(clips)
    short = plan_clips(row, ClipConfig(min_seconds=3.0, max_seconds=20.0, trim_frames=2))
    assert [(c["start"], c["end"]) for c in short] == [(0, 98), (132, 248), (262, 300)]


# ------------------------------------------------------------------------------------------------------- motion


def test_motion_orders_static_slow_fast_and_separates_camera_from_object(tmp_path):
    image = texture(0, width=8 * W)
    scores = {}
    for name, speed in (("static", 0), ("slow", 1), ("fast", 4)):
        path = write(pan(image, 48, speed), tmp_path / f"{name}.mp4")
        scores[name] = motion_scores(path, [{"start": 0, "end": 48, "fps": FPS}], MotionConfig())[0]
    assert scores["static"]["motion"] < 1e-3 < scores["slow"]["motion"] < scores["fast"]["motion"]
    # Frame widths per second: speed * fps / width.
    assert scores["slow"]["motion"] == pytest.approx(1 * FPS / W, rel=0.15)
    assert scores["fast"]["motion"] == pytest.approx(4 * FPS / W, rel=0.15)
    assert scores["slow"]["camera_motion"] > 0.9 and scores["fast"]["camera_motion"] > 0.9

    background = texture(1)[:, :W]
    frames = np.repeat(background[None], 48, axis=0)
    for i in range(48):
        frames[i, 30:60, 10 + 2 * i : 40 + 2 * i] = (250, 40, 40)  # a square crossing a still background
    path = write(frames, tmp_path / "object.mp4")
    moving = motion_scores(path, [{"start": 0, "end": 48, "fps": FPS}], MotionConfig())[0]
    assert moving["motion"] > 1e-3 and moving["camera_motion"] < 0.3
    farneback = motion_scores(str(tmp_path / "slow.mp4"), [{"start": 0, "end": 48, "fps": FPS}],
                              MotionConfig(method="farneback"))[0]
    assert farneback["motion"] == pytest.approx(scores["slow"]["motion"], rel=0.2)


# ------------------------------------------------------------------------------------------------------ quality


def test_quality_scores_respond_to_blur_blocks_and_text():
    noise = np.random.default_rng(3).integers(0, 256, (240, 320)).astype(np.uint8)
    image = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2), None, 0, 255, cv2.NORM_MINMAX)  # no 8 px structure
    sharp = cv2.resize(texture(3, 60, 80), (320, 240), interpolation=cv2.INTER_NEAREST)
    sharp_grey = cv2.cvtColor(sharp, cv2.COLOR_RGB2GRAY)
    assert sharpness(cv2.GaussianBlur(sharp_grey, (0, 0), 3), 256) < 0.2 * sharpness(sharp_grey, 256)

    _, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 3])
    blocky = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    assert blockiness(image) == pytest.approx(1.0, abs=0.1)
    assert blockiness(blocky) > 1.5
    shifted = np.roll(blocky, 4, axis=1)  # block edges off the 8 px grid: the score must follow the grid
    assert blockiness(shifted[:, 8:]) < blockiness(blocky)

    frame = texture(4, 240, 320)
    with_text = frame.copy()
    cv2.putText(with_text, "SUBSCRIBE NOW", (10, 130), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (255, 255, 255), 3)
    assert text_area_heuristic(frame) < 0.01 < text_area_heuristic(with_text)


def test_rapidocr_text_area_when_installed():
    pytest.importorskip("rapidocr_onnxruntime")
    from vidfusion.data.curation.quality import text_area_rapidocr

    frame = texture(4, 240, 320)
    with_text = frame.copy()
    cv2.putText(with_text, "SUBSCRIBE NOW", (10, 130), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (255, 255, 255), 3)
    assert text_area_rapidocr(frame) < 0.01 < text_area_rapidocr(with_text) < 0.3


def test_frame_indices_stay_inside_the_clip():
    assert frame_indices(10, 40, 3) == [15, 25, 35]
    assert frame_indices(0, 2, 3) == [0, 1]


# -------------------------------------------------------------------------------------------- filters, buckets


def clip_row(**change) -> dict:
    row = {"clip_id": "a", "path": "/a.mp4", "start": 0, "end": 96, "start_s": 0.0, "end_s": 4.0, "fps": 24.0,
           "width": 640, "height": 360, "rotation": 0, "motion": 0.05, "camera_motion": 0.5, "sharpness": 100.0,
           "brightness": 0.5, "clipped": 0.01, "blockiness": 1.0, "text_area": 0.0, "aesthetic": None,
           "caption": "", "clip_path": "", "text_detector": "heuristic"}
    return {**row, **change}


def test_filters_and_buckets():
    cfg = CurateConfig()
    rows = [clip_row(), clip_row(clip_id="b", motion=0.0005), clip_row(clip_id="c", text_area=0.2, sharpness=1.0),
            clip_row(clip_id="d", width=360, height=640, end_s=9.5), clip_row(clip_id="e", width=200, height=150)]
    manifest, judged = build_manifest(rows, cfg)
    assert [r["clip_id"] for r in manifest] == ["a", "d"]
    assert [r["dropped_by"] for r in judged] == [[], ["static"], ["blurry", "text"], [], ["too_small"]]
    assert manifest[0]["bucket"] == "360p-16:9-4s" and manifest[0]["num_frames"] == 96
    assert manifest[1]["bucket"] == "360p-9:16-8s"
    assert assign_bucket(clip_row(width=1920, height=800), cfg.buckets)[1] == "21:9"
    assert assign_bucket(clip_row(end_s=1.0), cfg.buckets) is None


# ------------------------------------------------------------------------------------------ config and inputs


def test_config_errors_are_one_line(tmp_path):
    assert config_from_dict({"clips": {"min_seconds": 3}}).clips.min_seconds == 3.0
    with pytest.raises(VidFusionError, match=r"unknown key clips.min_secs .*min_seconds"):
        config_from_dict({"clips": {"min_secs": 3}})
    with pytest.raises(VidFusionError, match=r"unknown section \[clip\]"):
        config_from_dict({"clip": {}})
    with pytest.raises(VidFusionError, match="motion.fps='two' is not a float"):
        config_from_dict({"motion": {"fps": "two"}})
    with pytest.raises(VidFusionError, match="max_seconds"):
        config_from_dict({"clips": {"min_seconds": 5.0, "max_seconds": 2.0}})
    with pytest.raises(VidFusionError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[clips\n")
    with pytest.raises(VidFusionError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    shipped = load_config(Path(__file__).parents[1] / "configs" / "curate_default.toml")
    assert shipped == CurateConfig()  # the shipped file spells out the defaults


def test_find_inputs(tmp_path):
    with pytest.raises(VidFusionError, match="does not exist"):
        find_inputs([str(tmp_path / "missing")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VidFusionError, match="no videos found"):
        find_inputs([str(tmp_path)])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.mkv").write_bytes(b"x")
    (tmp_path / "a.MP4").write_bytes(b"x")
    found = find_inputs([str(tmp_path), str(tmp_path / "notes.txt")])
    assert [Path(p).name for p in found] == ["a.MP4", "b.mkv", "notes.txt"]
