"""Video/image IO: round trips through every output format, contact-sheet layout, and user-facing read errors."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vidfusion.errors import VidFusionError
from vidfusion.io.video import (
    SHEET_LABEL_HEIGHT,
    SHEET_SEPARATOR,
    contact_sheet,
    probe_video,
    read_image,
    read_video,
    to_uint8_frames,
    write_contact_sheet,
    write_video,
)

ASL_CLIPS = Path("/work/shared/data/videos/intel/asl_gestures")


def gradient_video(num_frames: int = 9, height: int = 32, width: int = 48) -> np.ndarray:
    """A smooth gradient that drifts over time: easy for H.264, and every frame differs (GIF keeps them all)."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    red = 20 + 2 * x + 12 * t  # 12 levels per frame, so a dropped or shifted frame cannot hide in the tolerance
    green = 30 + 5 * y
    blue = 200 - 2 * x - 2 * y + 3 * t
    return np.stack([red, green, blue], axis=-1).clip(0, 255).astype(np.uint8)


def test_to_uint8_frames_maps_model_range_and_layout():
    video = torch.zeros(2, 3, 4, 5)
    video[0, 0] = -1.0  # red of frame 0 -> 0
    video[0, 1] = 1.0  # green of frame 0 -> 255
    video[1, 2] = 3.0  # out of range, clamped -> 255
    frames = to_uint8_frames(video)
    assert frames.shape == (2, 4, 5, 3) and frames.dtype == np.uint8
    assert (frames[0, ..., 0] == 0).all() and (frames[0, ..., 1] == 255).all() and (frames[0, ..., 2] == 128).all()
    assert (frames[1, ..., 2] == 255).all() and (frames[1, ..., 0] == 128).all()
    same = gradient_video(2)
    assert np.array_equal(to_uint8_frames(same), same)
    with pytest.raises(VidFusionError, match="uint8"):
        to_uint8_frames(same.astype(np.float32))
    with pytest.raises(VidFusionError, match=r"\[T, 3, H, W\]"):
        to_uint8_frames(torch.zeros(3, 2, 4, 5))


def test_mp4_round_trip(tmp_path):
    video = gradient_video()
    path = write_video(video, tmp_path / "sub" / "clip.mp4", fps=8)  # parent folder is created
    decoded, fps = read_video(path)
    assert decoded.shape == video.shape
    assert fps == 8.0
    # Measured 2.02 mean abs error, nearly all of it from RGB -> yuv420p -> RGB (swscale upsamples chroma by nearest
    # neighbour); x264 at crf 18 adds ~0.1. Frames differ by 12 in red, so the per-frame means pin the frame order.
    assert np.abs(decoded.astype(int) - video).mean() < 3.0
    assert np.abs(decoded[..., 0].mean((1, 2)) - video[..., 0].mean((1, 2))).max() < 3.0  # measured 1.4
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]  # no temp file left behind

    info = probe_video(path)
    assert info == {"num_frames": 9, "fps": 8.0, "width": 48, "height": 32, "codec": "h264", "duration": 9 / 8}

    part, _ = read_video(path, max_frames=4, start=3)
    assert np.array_equal(part, decoded[3:7])
    small, _ = read_video(path, size=(16, 24))
    assert small.shape == (9, 16, 24, 3)
    assert np.abs(small.astype(int) - video[:, ::2, ::2]).mean() < 4.0  # measured 2.34
    with pytest.raises(VidFusionError, match="past the end"):
        read_video(path, start=9)


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    video = gradient_video(5, 33, 45)
    decoded, _ = read_video(write_video(torch.from_numpy(video).permute(0, 3, 1, 2) / 127.5 - 1, tmp_path / "o.mp4"))
    assert decoded.shape == (5, 34, 46, 3)  # documented: padded up to even, never cropped
    assert np.abs(decoded[:, :33, :45].astype(int) - video).mean() < 3.0  # measured 2.08
    # The padding replicates the edge, so the extra row/column look like their neighbours.
    assert np.abs(decoded[:, 33, :45].astype(int) - video[:, 32]).mean() < 4.0
    assert np.abs(decoded[:, :33, 45].astype(int) - video[:, :, 44]).mean() < 4.0


def test_gif_frames_duration_and_loop(tmp_path):
    video = gradient_video()
    path = write_video(video, tmp_path / "clip.gif", fps=8)
    with Image.open(path) as gif:
        assert gif.n_frames == 9 and gif.size == (48, 32)
        assert gif.info["loop"] == 0
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    # GIF delays are whole centiseconds: 125 ms alternates 120/130 and the total stays 9 / 8 s.
    assert set(durations) == {120, 130}
    assert sum(durations) == 1120  # round(9 / 8 s to 1/100 s) = 1.12 s
    decoded, _ = read_video(path)
    assert decoded.shape == video.shape
    assert np.abs(decoded.astype(int) - video).mean() < 3.0  # 256-colour palette per frame; measured 1.87
    assert np.abs(decoded[..., 0].mean((1, 2)) - video[..., 0].mean((1, 2))).max() < 3.0


def test_png_folder(tmp_path):
    video = gradient_video()
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "frame_0042.png").write_bytes(b"stale frame from a longer earlier write")
    (folder / "notes.txt").write_text("not ours")
    write_video(video, str(folder) + "/")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(9)] + ["notes.txt"]
    for i in (0, 8):
        assert np.array_equal(read_image(folder / f"frame_{i:04d}.png"), video[i])  # PNG is lossless

    write_video(video[:2], tmp_path / "nosuffix")
    assert sorted(p.name for p in (tmp_path / "nosuffix").iterdir()) == ["frame_0000.png", "frame_0001.png"]


def test_contact_sheet_layout(tmp_path):
    video = gradient_video(9, 20, 30)
    sheet = contact_sheet(video, num=5, cols=3)
    sep, label = SHEET_SEPARATOR, SHEET_LABEL_HEIGHT
    assert sheet.shape == (2 * (20 + label) + 3 * sep, 3 * 30 + 4 * sep, 3)
    # Tiles are exact copies of frames 0, 2, 4, 6, 8 (evenly spaced, first and last included).
    for k, index in enumerate([0, 2, 4, 6, 8]):
        y, x = sep + (k // 3) * (20 + label + sep), sep + (k % 3) * (30 + sep)
        assert np.array_equal(sheet[y : y + 20, x : x + 30], video[index]), k
    # Default columns: 8 frames -> 4 x 2.
    assert contact_sheet(video).shape == (2 * (20 + label) + 3 * sep, 4 * 30 + 5 * sep, 3)
    # Fewer frames than asked: every frame once.
    assert contact_sheet(video[:3], num=8).shape == (20 + label + 2 * sep, 3 * 30 + 4 * sep, 3)

    written = read_image(write_contact_sheet(video, tmp_path / "sheet.png", num=5, cols=3))
    assert np.array_equal(written, sheet)
    assert np.array_equal(read_image(write_video(video, tmp_path / "via_write_video.png")), contact_sheet(video))


def test_failed_write_leaves_nothing_under_final_name(tmp_path, monkeypatch):
    import vidfusion.io.video as video_io

    target = tmp_path / "clip.mp4"
    target.write_bytes(b"previous good file")

    def half_write_then_die(video, path, fps, crf):
        Path(path).write_bytes(b"half an mp4")
        raise KeyboardInterrupt

    monkeypatch.setattr(video_io, "_write_mp4", half_write_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_video(gradient_video(2), target)
    assert target.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_unknown_output_suffix(tmp_path):
    path = tmp_path / "clip.avi"
    with pytest.raises(VidFusionError) as error:
        write_video(gradient_video(2), path)
    message = str(error.value)
    assert str(path) in message and ".mp4" in message and ".gif" in message and ".png" in message
    assert not path.exists()


def _read_error(path: Path) -> str:
    with pytest.raises(VidFusionError) as error:
        read_video(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_read_errors_name_path_and_reason(tmp_path):
    assert "not found" in _read_error(tmp_path / "missing.mp4")

    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert "0 bytes" in _read_error(empty)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    assert "cannot open" in _read_error(text)

    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(800) / 5) * 1e4).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert "no video stream" in _read_error(audio)

    # A real clip cut in half, as an interrupted download leaves it.
    noise = np.random.default_rng(0).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    data = write_video(noise, tmp_path / "full.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated" in _read_error(truncated)
    assert read_video(truncated, max_frames=4)[0].shape == (4, 64, 64, 3)  # the intact start is still readable


def test_read_image(tmp_path):
    image = gradient_video(1)[0]
    Image.fromarray(image).convert("L").save(tmp_path / "gray.png")
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (32, 48, 3) and np.array_equal(gray[..., 0], gray[..., 2])  # converted to RGB

    (tmp_path / "notes.png").write_text("not an image")
    for bad in (tmp_path / "missing.png", tmp_path / "notes.png"):
        with pytest.raises(VidFusionError, match=str(bad)):
            read_image(bad)


@pytest.mark.skipif(not ASL_CLIPS.is_dir(), reason=f"{ASL_CLIPS} is not on this machine")
def test_real_clip():
    clip = sorted(ASL_CLIPS.glob("*.mkv"))[0]
    frames, fps = read_video(clip, max_frames=8)
    assert frames.shape == (8, 480, 640, 3) and frames.dtype == np.uint8
    assert fps > 0
    assert frames.std() > 5  # real content, not a blank decode
    info = probe_video(clip)
    assert (info["height"], info["width"]) == (480, 640)
