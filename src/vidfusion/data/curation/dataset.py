"""Training clips from a curated manifest, in the form the trainers' WorldClips gives: {"video": uint8 [3, T, H, W],
"caption": str}.

Item i is manifest row i % len(manifest), with a window of `num_frames` consecutive frames whose start inside the clip
is drawn from a generator seeded by i, so that a resumed trainer sees the same samples. Frames are scaled so that
they cover (height, width) and centre-cropped (no distortion), after turning them by the file's display rotation.
A clip written by `clips.write` is read from its own file; otherwise the source is decoded from its start up to the
clip, which is fine for short sources and slow for hour-long ones (write the clips for those).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from vidfusion.data.curation.decode import iter_frames
from vidfusion.errors import VidFusionError


def cover_crop(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    return resized[top : top + height, left : left + width]


def load_clip(row: dict[str, Any], first: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames [first, first + num_frames) of the source video (absolute indices) as uint8 [T, height, width, 3]."""
    path, offset = (row["clip_path"], row["start"]) if row.get("clip_path") else (row["path"], 0)
    turns = (row.get("rotation") or 0) // 90  # the display rotation is counter-clockwise, as np.rot90 turns
    wanted = set(range(first - offset, first - offset + num_frames))
    frames = [cover_crop(np.rot90(rgb, turns), height, width) for _, rgb in iter_frames(path, wanted, fmt="rgb24")]
    return np.stack(frames)


class ManifestClips(Dataset):
    def __init__(self, manifest: list[dict[str, Any]], num_frames: int, height: int, width: int, seed: int = 0):
        usable = [r for r in manifest if r["end"] - r["start"] >= num_frames]
        if not usable:
            raise VidFusionError(f"no clip in the manifest has {num_frames} frames; lower num_frames or curate with a "
                                 f"longer clips.min_seconds")
        self.rows, self.num_frames, self.height, self.width, self.seed = usable, num_frames, height, width, seed

    def __len__(self) -> int:
        return 2**62  # indices wrap around the manifest, as the trainers' streams expect

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index % len(self.rows)]
        rng = np.random.default_rng([self.seed, index])
        first = row["start"] + int(rng.integers(0, row["end"] - row["start"] - self.num_frames + 1))
        video = load_clip(row, first, self.num_frames, self.height, self.width)
        return {"video": torch.from_numpy(video).permute(3, 0, 1, 2).contiguous(), "caption": row["caption"]}
