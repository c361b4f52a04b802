"""Reading and writing videos, frame folders, contact sheets and images.

Everything here works on uint8 RGB frames `[T, H, W, 3]`; `to_uint8_frames` converts the model's float
`[T, 3, H, W]` tensors in [-1, 1] into that form, and every writer accepts either.

Decisions worth knowing:
- `.mp4` is H.264 in yuv420p, the one combination every browser and player decodes. yuv420p needs even width and
  height, so odd sizes are padded by one edge-replicated row/column: a 33x45 (HxW) video decodes as 34x46.
  Padding rather than cropping keeps every input pixel.
- `.gif` is written with Pillow, not PyAV: Pillow builds an adaptive palette per frame, whereas FFmpeg's gif encoder
  only takes fixed 8-bit palettes (rgb8) without a palette filter graph. GIF delays are whole 1/100 s, so per-frame
  delays alternate (e.g. 120/130 ms at 8 fps) to keep the total duration right. Pillow merges identical consecutive
  frames into one longer frame; playback is unchanged but the stored frame count can be lower.
- A `.png` path is a contact sheet; a path with no suffix (or ending in `/`) is a folder of `frame_0000.png`, ...
- Every file is written to a temporary name in the destination folder and moved into place with `os.replace`, so an
  interrupted run never leaves a half-written file under the final name.
- Readers decode with PyAV and turn every FFmpeg/Pillow failure into a one-line `VidFusionError`.
"""

import math
import os
import re
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import atomic_write

PathLike = str | os.PathLike[str]
VideoLike = torch.Tensor | np.ndarray

SUPPORTED_OUTPUTS = ".mp4 (H.264), .gif, .png (contact sheet), or a folder path with no suffix (PNG frames)"
_FIX_VIDEO = "re-download it or re-encode it, e.g. `ffmpeg -i in.mov -c:v libx264 -pix_fmt yuv420p out.mp4`"

SHEET_SEPARATOR = 2  # px of background between and around tiles
SHEET_LABEL_HEIGHT = 12  # px strip under each tile for its frame index, so tile pixels stay untouched
SHEET_BACKGROUND = 32


def to_uint8_frames(video: VideoLike) -> np.ndarray:
    """Convert a video to uint8 RGB frames `[T, H, W, 3]`.

    Accepts either a float torch tensor `[T, 3, H, W]` with values in [-1, 1] (the model convention; values outside
    are clamped), or a `np.uint8` array `[T, H, W, 3]` (returned as is, made contiguous).
    """
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise VidFusionError(
                f"numpy video has dtype {video.dtype} and shape {video.shape}; pass uint8 [T, H, W, 3] RGB frames"
            )
        return np.ascontiguousarray(video)
    if isinstance(video, torch.Tensor):
        if not video.is_floating_point() or video.ndim != 4 or video.shape[1] != 3:
            raise VidFusionError(
                f"torch video has dtype {video.dtype} and shape {tuple(video.shape)}; "
                "pass a float [T, 3, H, W] tensor in [-1, 1]"
            )
        pixels = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    raise VidFusionError(f"video is a {type(video).__name__}; pass a torch tensor or a numpy array")


# ----------------------------------------------------------------------------------------------------------- writing


def output_format(path: PathLike) -> str:
    """"mp4", "gif", "sheet" or "frames" for an output path; an unsupported suffix is a one-line error, so callers
    can check before spending minutes generating."""
    if str(path).endswith(("/", os.sep)) or Path(path).suffix == "":
        return "frames"
    kind = {".mp4": "mp4", ".gif": "gif", ".png": "sheet"}.get(Path(path).suffix.lower())
    if kind is None:
        raise VidFusionError(f"cannot write {path}: unknown suffix {Path(path).suffix!r}; use {SUPPORTED_OUTPUTS}")
    return kind


def write_video(frames: VideoLike, path: PathLike, fps: float = 8, crf: int = 18) -> Path:
    """Write `frames` to `path`, choosing the format by suffix; returns the path written.

    `.mp4`: H.264 (libx264, yuv420p, `crf` 0-51, lower is better; 18 is visually lossless). Odd heights/widths are
    padded by edge replication to the next even number, so the decoded size is `(H + H % 2, W + W % 2)`.
    `.gif`: loops forever, frame delays from `fps` rounded to 1/100 s (see the module docstring).
    `.png`: a contact sheet of 8 frames (`write_contact_sheet` for more control).
    No suffix or a trailing `/`: a folder of `frame_0000.png`, ...; stale `frame_*.png` from a longer earlier write
    are removed so the folder holds exactly this video.
    Parent folders are created.
    """
    video = to_uint8_frames(frames)
    if video.shape[0] == 0:
        raise VidFusionError(f"cannot write {path}: the video has 0 frames; pass at least one frame")
    if not fps > 0:
        raise VidFusionError(f"fps={fps} for {path} is not positive; pass e.g. fps=8")
    kind = output_format(path)
    path = Path(path)
    if kind == "mp4":
        atomic_write(path, lambda tmp: _write_mp4(video, tmp, fps, crf))
    elif kind == "gif":
        atomic_write(path, lambda tmp: _write_gif(video, tmp, fps))
    elif kind == "sheet":
        write_contact_sheet(video, path)
    else:
        _write_png_folder(video, path)
    return path


def _write_mp4(video: np.ndarray, path: Path, fps: float, crf: int) -> None:
    # yuv420p subsamples chroma 2x2, so both sides must be even.
    _, height, width, _ = video.shape
    video = np.pad(video, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)  # keeps NTSC rates like 30000/1001 exact
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for rgb in video:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the frames x264 holds back for B-frame lookahead


def _gif_delays_ms(num_frames: int, fps: float) -> list[int]:
    # Round the cumulative time, not each delay, so rounding errors do not add up over the clip.
    ends = [round(100 * i / fps) for i in range(num_frames + 1)]
    return [max(10 * (b - a), 20) for a, b in zip(ends, ends[1:])]  # browsers treat delays < 20 ms as 100 ms


def _write_gif(video: np.ndarray, path: Path, fps: float) -> None:
    images = [Image.fromarray(rgb) for rgb in video]
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=_gif_delays_ms(len(video), fps)
    )


def _write_png_folder(video: np.ndarray, folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise VidFusionError(f"cannot write frames to {folder}: it is a file; pass a folder path or a .mp4/.gif name")
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(len(video) - 1)))
    names = [f"frame_{i:0{digits}d}.png" for i in range(len(video))]
    for name, rgb in zip(names, video):
        atomic_write(folder / name, lambda tmp, rgb=rgb: Image.fromarray(rgb).save(tmp, format="PNG"))
    for stale in folder.glob("frame_*.png"):
        if re.fullmatch(r"frame_\d+\.png", stale.name) and stale.name not in names:
            stale.unlink()


# ------------------------------------------------------------------------------------------------------ contact sheet


def contact_sheet(frames: VideoLike, num: int = 8, cols: int | None = None) -> np.ndarray:
    """Tile `num` evenly spaced frames (always the first and the last) into one uint8 image `[H', W', 3]`.

    Tiles are the frames at full resolution, pixel for pixel. Each tile has a `SHEET_LABEL_HEIGHT` strip beneath it
    with the frame index, and tiles are separated (and surrounded) by `SHEET_SEPARATOR` px of dark background, so
    with n = min(num, T) tiles, `cols` (default min(n, 4)) and rows = ceil(n / cols) the sheet is
    `rows * (H + SHEET_LABEL_HEIGHT) + (rows + 1) * SHEET_SEPARATOR` high and `cols * W + (cols + 1) * SHEET_SEPARATOR`
    wide. Tile k sits at y = SEP + row * (H + LABEL + SEP), x = SEP + col * (W + SEP).
    """
    video = to_uint8_frames(frames)
    num_frames, height, width, _ = video.shape
    if num < 1 or num_frames == 0:
        raise VidFusionError(f"contact sheet needs num >= 1 and a non-empty video (got num={num}, T={num_frames})")
    indices = np.unique(np.linspace(0, num_frames - 1, min(num, num_frames)).round().astype(int))
    cols = min(len(indices), 4) if cols is None else cols
    if cols < 1:
        raise VidFusionError(f"contact sheet cols={cols} is not positive; pass cols >= 1 or leave it None")
    rows = math.ceil(len(indices) / cols)

    sep, label = SHEET_SEPARATOR, SHEET_LABEL_HEIGHT
    sheet = np.full(
        (rows * (height + label) + (rows + 1) * sep, cols * width + (cols + 1) * sep, 3), SHEET_BACKGROUND, np.uint8
    )
    for k, index in enumerate(indices):
        y = sep + (k // cols) * (height + label + sep)
        x = sep + (k % cols) * (width + sep)
        sheet[y : y + height, x : x + width] = video[index]

    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    for k, index in enumerate(indices):
        y = sep + (k // cols) * (height + label + sep) + height
        draw.text((sep + (k % cols) * (width + sep) + 1, y), str(index), fill=(220, 220, 220))
    return np.asarray(image).copy()


def write_contact_sheet(frames: VideoLike, path: PathLike, num: int = 8, cols: int | None = None) -> Path:
    """Write `contact_sheet(frames, num, cols)` to `path` as a PNG (atomically, creating parent folders)."""
    path = Path(path)
    sheet = contact_sheet(frames, num, cols)
    atomic_write(path, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))
    return path


# ----------------------------------------------------------------------------------------------------------- reading


def _check_file(path: Path, kind: str) -> None:
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise VidFusionError(f"{kind} not found: {path}{where}; check the path")
    if path.is_dir():
        raise VidFusionError(f"{path} is a folder, not a {kind} file; pass the path of a single file")
    if path.stat().st_size == 0:
        raise VidFusionError(f"{kind} {path} is empty (0 bytes), likely a failed copy; re-download or re-export it")


@contextmanager
def _open_video(path: PathLike) -> Iterator[tuple[Any, Any]]:
    """Open `path` and yield (container, first video stream), with user-facing errors for bad files."""
    path = Path(path)
    _check_file(path, "video")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise VidFusionError(
            f"cannot open {path} as a video ({_reason(e)}); check it is a video file; if it is, {_FIX_VIDEO}"
        ) from e
    with container:
        if not container.streams.video:
            raise VidFusionError(f"{path} has no video stream (audio or data only); pass a file with a video track")
        yield container, container.streams.video[0]


def _reason(error: Exception) -> str:
    # FFmpeg errors repr as "[Errno 1094995529] Invalid data found when processing input: 'path'": keep the middle.
    return getattr(error, "strerror", None) or str(error)


def _fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def read_video(
    path: PathLike, max_frames: int | None = None, start: int = 0, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, float]:
    """Decode frames `[start, start + max_frames)` of `path` as uint8 RGB `[T, H, W, 3]`, plus the stream's fps.

    `size=(height, width)` resizes each frame (area interpolation). Frames before `start` are decoded and dropped
    rather than seeked to, so `start` is exact for any codec. fps is 0.0 when the container does not state it.
    """
    path = Path(path)
    if start < 0 or (max_frames is not None and max_frames < 1):
        raise VidFusionError(f"reading {path}: start={start}, max_frames={max_frames}; use start >= 0, max_frames >= 1")
    resize = {} if size is None else {"height": size[0], "width": size[1], "interpolation": "AREA"}
    frames: list[np.ndarray] = []
    with _open_video(path) as (container, stream):
        stream.thread_type = "AUTO"
        declared = stream.frames  # 0 when the container does not say
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index < start:
                    continue
                frames.append(frame.to_ndarray(format="rgb24", **resize))
                if max_frames is not None and len(frames) == max_frames:
                    break
        except av.FFmpegError as e:
            raise VidFusionError(
                f"{path} is corrupt or truncated: decoding failed after {index + 1} frames ({_reason(e)}); {_FIX_VIDEO}"
            ) from e
        fps = _fps(stream)
    reached_end = max_frames is None or len(frames) < max_frames
    if reached_end and declared and index + 1 < declared:
        # Some demuxers stop quietly at a cut-off file; the header's frame count gives it away.
        raise VidFusionError(
            f"{path} is truncated: its header promises {declared} frames but only {index + 1} decode; {_FIX_VIDEO}"
        )
    if not frames:
        raise VidFusionError(f"{path} has {index + 1} frames, so start={start} is past the end; use a smaller start")
    return np.stack(frames), fps


def probe_video(path: PathLike) -> dict[str, Any]:
    """Stream facts without decoding: num_frames (None if the container does not say), fps, width, height,
    codec name and duration in seconds (None if unknown)."""
    with _open_video(path) as (container, stream):
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = None
        return {
            "num_frames": stream.frames or None,
            "fps": _fps(stream),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "codec": stream.codec_context.name,
            "duration": duration,
        }


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, height, width, 3]: the largest centred crop of the target's aspect ratio, resized
    with area interpolation (Lanczos when enlarging)."""
    h, w = frames.shape[1:3]
    scale = min(h / height, w / width)
    ch, cw = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    interpolation = cv2.INTER_AREA if ch >= height else cv2.INTER_LANCZOS4
    return np.stack([cv2.resize(np.ascontiguousarray(f[top:top + ch, left:left + cw]), (width, height),
                                interpolation=interpolation) for f in frames])


def read_image(path: PathLike) -> np.ndarray:
    """Read an image as uint8 RGB `[H, W, 3]`, applying its EXIF orientation (phones often store photos sideways)."""
    path = Path(path)
    _check_file(path, "image")
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VidFusionError(f"cannot read {path} as an image ({e}); pass a PNG, JPEG or WebP file") from e
