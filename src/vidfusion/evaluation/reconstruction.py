"""VAE reconstruction quality: PSNR and SSIM of encode -> decode round trips on world and real clips.

Videos are `[T, H, W, C]` (uint8, or float on the scale given by `data_range`); metrics are computed per frame and
averaged over frames, then over clips.

Decisions worth knowing:
- PSNR of identical frames is capped at `PSNR_CAP` = 100 dB instead of inf, so one exactly reconstructed frame
  (a black frame, say) does not turn a clip's mean into inf. 100 dB is above any finite uint8 PSNR on frames up to
  ~1.7 megapixels (one grey level off in one pixel of a 128x128 RGB frame is 95 dB).
- SSIM is Wang et al. 2004: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = `data_range`, computed
  on each RGB channel separately and averaged over channels (not on luma). Filtering is 'valid' (no padding), as in
  the authors' reference ssim_index.m, so the map is (H - 10) x (W - 10); no automatic downsampling is applied.
  Statistics are in float64 so that ssim(x, x) is 1 to rounding.
- Real clips are compared after the same preprocessing the model would get: 17 frames from the middle, shorter side
  resized to 128 with area interpolation (cv2.INTER_AREA, the usual choice for downscaling), centre-cropped.
- Reconstructions use the posterior mode and are clamped to [-1, 1] and rounded to uint8 before scoring, so the
  numbers describe what a user would see in a written video.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from vidfusion.errors import VidFusionError
from vidfusion.io.video import probe_video, read_video, to_uint8_frames

PSNR_CAP = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")

VideoLike = np.ndarray | torch.Tensor


def _as_float_pair(a: VideoLike, b: VideoLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both videos as float64 `[T, H, W, C]` tensors (a single `[H, W, C]` frame becomes T = 1)."""
    a, b = (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for v in (a, b))
    if a.shape != b.shape:
        raise VidFusionError(f"cannot compare videos of shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                             "resize or crop them to the same [T, H, W, C]")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise VidFusionError(f"video has shape {tuple(a.shape)}; pass [T, H, W, C] frames or one [H, W, C] frame")
    return a.detach().cpu().double(), b.detach().cpu().double()


def psnr_per_frame(a: VideoLike, b: VideoLike, data_range: float = 255.0) -> torch.Tensor:
    """PSNR in dB of each frame, `10 log10(L^2 / MSE)`, capped at `PSNR_CAP`; float64 `[T]`."""
    a, b = _as_float_pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    # Where mse is 0 the division gives inf, which the cap replaces.
    return (10 * torch.log10(data_range**2 / mse)).clamp(max=PSNR_CAP)


def psnr(a: VideoLike, b: VideoLike, data_range: float = 255.0) -> float:
    """Mean over frames of the per-frame PSNR in dB (identical frames score `PSNR_CAP`). uint8 videos use the
    default `data_range=255`; pass `data_range=2.0` for float videos in [-1, 1]."""
    return psnr_per_frame(a, b, data_range).mean().item()


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """'Valid' 2-D Gaussian filtering of `[N, 1, H, W]`; the window is separable, so two 1-D passes."""
    size = window.numel()
    x = torch.nn.functional.conv2d(x, window.view(1, 1, size, 1))
    return torch.nn.functional.conv2d(x, window.view(1, 1, 1, size))


def ssim_per_frame(a: VideoLike, b: VideoLike, data_range: float = 255.0) -> torch.Tensor:
    """SSIM of each frame (Wang et al. 2004, per RGB channel, averaged over channels); float64 `[T]`."""
    a, b = _as_float_pair(a, b)
    frames, height, width, channels = a.shape
    if min(height, width) < SSIM_WINDOW:
        raise VidFusionError(f"frames of {height}x{width} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM "
                             f"window; compare frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}")
    # Every channel of every frame is an independent image for the filter.
    x = a.permute(0, 3, 1, 2).reshape(frames * channels, 1, height, width)
    y = b.permute(0, 3, 1, 2).reshape(frames * channels, 1, height, width)
    window = _gaussian_window()
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x**2
    var_y = _blur(y * y, window) - mu_y**2
    cov = _blur(x * y, window) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(frames, channels, -1).mean(dim=(1, 2))


def ssim(a: VideoLike, b: VideoLike, data_range: float = 255.0) -> float:
    """Mean over frames of the per-frame SSIM (see the module docstring for the exact definition)."""
    return ssim_per_frame(a, b, data_range).mean().item()


# ------------------------------------------------------------------------------------------------------- real clips


def _frame_count(path: Path) -> int:
    info = probe_video(path)
    if info["num_frames"]:
        return info["num_frames"]
    if info["duration"] and info["fps"]:
        return round(info["duration"] * info["fps"])  # mkv/webm headers often give no count; an estimate suffices
    return len(read_video(path)[0])


def middle_frames(path: str | os.PathLike, num_frames: int = 17) -> np.ndarray:
    """`num_frames` consecutive uint8 frames from the middle of a video file."""
    path = Path(path)
    total = _frame_count(path)
    if total < num_frames:
        raise VidFusionError(f"{path} has about {total} frames, fewer than the {num_frames} asked for; "
                             f"use a longer clip or a smaller num_frames")
    start = (total - num_frames) // 2
    frames, _ = read_video(path, max_frames=num_frames, start=start)
    if len(frames) < num_frames:
        # The duration-based estimate overshot the real count: step back by the shortfall.
        start = max(0, start - (num_frames - len(frames)))
        frames, _ = read_video(path, max_frames=num_frames, start=start)
    if len(frames) < num_frames:
        raise VidFusionError(f"{path} decodes to fewer than {num_frames} frames; use a longer clip")
    return frames


def resize_and_crop(frames: np.ndarray, size: int = 128) -> np.ndarray:
    """Resize so the shorter side is `size` (area interpolation), then take the centre `size x size` square."""
    height, width = frames.shape[1:3]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = np.stack([cv2.resize(f, (new_w, new_h), interpolation=cv2.INTER_AREA) for f in frames])
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(resized[:, top:top + size, left:left + size])


def centre_crop_clips(paths: Sequence[str | os.PathLike], num_frames: int = 17, size: int = 128) -> list[np.ndarray]:
    """For each video file: `num_frames` frames from its middle, shorter side resized to `size`, centre-cropped;
    uint8 `[num_frames, size, size, 3]` each."""
    return [resize_and_crop(middle_frames(p, num_frames), size) for p in paths]


def find_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files under `folder` (recursively), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VidFusionError(f"video folder {folder} does not exist; pass a folder holding .mp4/.webm/.mkv files")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not paths:
        raise VidFusionError(f"{folder} holds no video files ({', '.join(VIDEO_SUFFIXES)}); pass another folder")
    return paths


# ------------------------------------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def clip_latents(vae, clip: np.ndarray) -> torch.Tensor:
    """The posterior mode `[1, C, F, h, w]` (unscaled) of a uint8 `[T, H, W, 3]` clip, on the VAE's device and dtype."""
    param = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.from_numpy(clip).to(device).permute(3, 0, 1, 2)[None].to(dtype) / 127.5 - 1  # [1, 3, T, H, W]
    return vae.encode(x).mode()


def reconstruct(vae, clip: np.ndarray) -> np.ndarray:
    """Encode a uint8 `[T, H, W, 3]` clip with the posterior mode, decode, and return uint8 `[T, H, W, 3]`."""
    recon = vae.decode(clip_latents(vae, clip))
    return to_uint8_frames(recon[0].float().transpose(0, 1))  # clamps to [-1, 1] and rounds


def evaluate_vae(vae, clips: Sequence[np.ndarray], names: Sequence[str] | None = None) -> dict:
    """PSNR/SSIM of the VAE's round trip on each uint8 `[T, H, W, 3]` clip.

    Returns `{"n", "psnr", "ssim", "clips": [{"name", "psnr", "ssim"}, ...]}` with means over clips.
    """
    if names is None:
        names = [str(i) for i in range(len(clips))]
    assert len(names) == len(clips), "one name per clip"
    rows = []
    for name, clip in zip(names, clips):
        recon = reconstruct(vae, clip)
        rows.append({"name": name, "psnr": psnr(clip, recon), "ssim": ssim(clip, recon)})
    mean = (lambda key: sum(r[key] for r in rows) / len(rows)) if rows else (lambda key: math.nan)
    return {"n": len(rows), "psnr": mean("psnr"), "ssim": mean("ssim"), "clips": rows}


def format_table(results: dict[str, dict]) -> str:
    """Plain-text table of dataset, n, mean PSNR and SSIM, one row per `evaluate_vae` result."""
    width = max([len("dataset"), *map(len, results)])
    lines = [f"{'dataset':<{width}}  {'n':>4}  {'PSNR':>7}  {'SSIM':>6}"]
    for name, r in results.items():
        lines.append(f"{name:<{width}}  {r['n']:>4}  {r['psnr']:>7.2f}  {r['ssim']:>6.4f}")
    return "\n".join(lines)


def reconstruction_datasets(world_n: int, real_dirs: list[str | Path]) -> dict[str, tuple[list, list[str]]]:
    """{row name: (clips, clip names)}: `world_n` clips of the world's val split, and the videos under each real
    folder grouped by sub-folder, because sources differ a lot (animation vs fixed-camera footage)."""
    from vidfusion.data.world import eval_split

    datasets: dict[str, tuple[list, list[str]]] = {}
    if world_n > 0:
        samples = eval_split("val", world_n)
        datasets["world-val"] = ([s.video for s in samples], [f"val/{s.index}" for s in samples])
    for real in real_dirs:
        by_folder: dict[str, list[Path]] = {}
        for p in find_videos(real):
            by_folder.setdefault(str(p.parent.relative_to(Path(real).parent)), []).append(p)
        for name, group in by_folder.items():
            datasets[name] = (centre_crop_clips(group), [str(p) for p in group])
    if not datasets:
        raise VidFusionError("nothing to evaluate: --world-n is 0 and no --real folder was given; pass either")
    return datasets


def evaluate_datasets(vae, datasets: dict[str, tuple[list, list[str]]]) -> dict[str, dict]:
    """`evaluate_vae` per row, plus a "real (all)" row averaging every real clip when there are several real rows."""
    results = {name: evaluate_vae(vae, clips, names) for name, (clips, names) in datasets.items()}
    real = [name for name in results if name != "world-val"]
    if len(real) > 1:
        rows = [row for name in real for row in results[name]["clips"]]
        results["real (all)"] = {"n": len(rows), "psnr": sum(r["psnr"] for r in rows) / len(rows),
                                 "ssim": sum(r["ssim"] for r in rows) / len(rows), "clips": []}
    return results
