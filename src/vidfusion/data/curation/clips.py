"""Clip stage: shots -> training clips of bounded length, as (path, start, end) references or written files.

Every shot loses `trim_frames` at each side that borders a cut or a fade (a transition smears over a frame or two
and a detector can be a frame off); a side at the start or end of the file is kept. What is left is dropped when
shorter than `min_seconds` and split into equal parts when longer than `max_seconds`: n = ceil(len / max) parts,
so no part is a short leftover.

Written clips are re-encoded (H.264, crf 18) rather than stream-copied: a copy can only start on a keyframe, and
a clip that silently starts up to a GOP early would carry frames across the cut it was trimmed away from.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vidfusion.data.curation.config import ClipConfig


def plan_clips(row: dict[str, Any], cfg: ClipConfig) -> list[dict[str, Any]]:
    """Clip rows (the video's probe columns plus clip_id, start, end, ...) for one row of the shot table."""
    fps, total = row["fps"], row["decoded_frames"]
    edges = set(row["cuts"]) | set(row["fade_starts"]) | set(row["fade_ends"])
    min_frames = math.ceil(cfg.min_seconds * fps - 1e-6)
    max_frames = max(min_frames, math.floor(cfg.max_seconds * fps + 1e-6))
    probe = {k: v for k, v in row.items() if k not in SHOT_KEYS}
    # The stem for people, a hash of the full path so that a.mp4 in two folders never share ids.
    name = f"{Path(row['path']).stem}-{hashlib.sha1(row['path'].encode()).hexdigest()[:8]}"
    clips = []
    for shot_start, shot_end in zip(row["shot_starts"], row["shot_ends"]):
        start = shot_start + (cfg.trim_frames if shot_start > 0 and shot_start in edges else 0)
        end = shot_end - (cfg.trim_frames if shot_end < total and shot_end in edges else 0)
        length = end - start
        if length < min_frames:
            continue
        parts = math.ceil(length / max_frames)
        bounds = [start + round(i * length / parts) for i in range(parts + 1)]
        for a, b in zip(bounds, bounds[1:]):
            if b - a >= min_frames:
                clips.append({**probe, "clip_id": f"{name}-{a:06d}", "start": a, "end": b,
                              "start_s": a / fps, "end_s": b / fps, "clip_path": ""})
    return clips


SHOT_KEYS = ("decoded_frames", "cuts", "fade_starts", "fade_ends", "shot_starts", "shot_ends", "shot_error")


def write_clips(path: str, clips: list[dict[str, Any]], out_dir: str) -> None:
    """Re-encode each clip's frames to `out_dir/<clip_id>.mp4` (one decode of the source for all of them) and set
    its clip_path. Clips are read in order, so the source is decoded once."""
    import av

    from vidfusion.data.curation.decode import iter_frames
    from vidfusion.io.checkpoint import atomic_write

    if not clips:
        return
    wanted = {i for c in clips for i in range(c["start"], c["end"])}
    frames = iter_frames(path, wanted, fmt="rgb24")
    for clip in sorted(clips, key=lambda c: c["start"]):
        target = Path(out_dir) / f"{clip['clip_id']}.mp4"

        def encode(tmp: Path, clip: dict[str, Any] = clip) -> None:
            first = next(frames)[1]  # its size sets the stream's; frames stream through, never a whole clip in memory
            height, width = first.shape[0] // 2 * 2, first.shape[1] // 2 * 2  # yuv420p needs even sides
            with av.open(str(tmp), "w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=Fraction(clip["fps"]).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"crf": "18"}
                for i in range(clip["end"] - clip["start"]):
                    rgb = first if i == 0 else next(frames)[1]
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), format="rgb24")
                    container.mux(stream.encode(frame))
                container.mux(stream.encode())

        atomic_write(target, encode)
        clip["clip_path"] = str(target)
