"""Probe stage: what each input file is, or why it cannot be used.

PyAV reads the header, demuxes every packet of the video stream (cheap: no decoding) and decodes the first frame.
From the packets come the true frame count, the frame rate and whether it is constant; from the first frame the
display rotation. A file is skipped, with its reason recorded, when it is empty, not a container FFmpeg can open,
has no video stream, cannot decode its first frame, ends before its header says it should (truncated), or has a
variable frame rate (clips are cut by frame index, which is a fixed time only at a constant rate). Damage in the
middle of a file shows up in the shot stage, which decodes every frame.
"""

from __future__ import annotations

import os
from typing import Any

import av
import numpy as np

from vidfusion.data.curation.config import ProbeConfig
from vidfusion.data.curation.decode import reason

FIX = "re-encode it, e.g. `ffmpeg -i IN -vf fps=30 -c:v libx264 -pix_fmt yuv420p OUT.mp4`"


def probe_file(path: str, cfg: ProbeConfig) -> dict[str, Any]:
    row: dict[str, Any] = {"path": path, "ok": False, "reason": "", "bytes": 0}
    try:
        row["bytes"] = os.path.getsize(path)
    except OSError as e:
        return {**row, "reason": f"cannot read the file ({reason(e)})"}
    if row["bytes"] == 0:
        return {**row, "reason": "empty file (0 bytes), likely a failed copy"}
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        return {**row, "reason": f"not a video FFmpeg can open ({reason(e)})"}
    with container:
        if not container.streams.video:
            return {**row, "reason": "no video stream (audio or data only)"}
        stream = container.streams.video[0]
        row.update(container=container.format.name, codec=stream.codec_context.name)
        why = _check_stream(container, stream, row, cfg)
    return {**row, "ok": not why, "reason": why}


def _check_stream(container: Any, stream: Any, row: dict[str, Any], cfg: ProbeConfig) -> str:
    """Fill `row` with the stream's facts; return why the file is unusable, or ""."""
    pts = []
    try:
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                pts.append(packet.pts)
    except av.FFmpegError as e:
        return f"truncated or corrupt: reading stopped after {len(pts)} frames ({reason(e)}); {FIX}"
    if not pts:
        return "the video stream holds no frames"
    declared = stream.frames  # 0 when the container does not say
    if declared and len(pts) < declared:
        return f"truncated: the header promises {declared} frames but only {len(pts)} are present; {FIX}"

    pts_sorted = np.sort(np.asarray(pts, dtype=np.int64))
    intervals = np.diff(pts_sorted).astype(np.float64)
    time_base = float(stream.time_base)
    median = float(np.median(intervals)) if len(intervals) else 0.0
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else (1.0 / (median * time_base) if median > 0 else 0.0)
    if not fps > 0:
        return f"no frame rate in the file; {FIX}"
    num_frames = len(pts)
    row.update(fps=fps, num_frames=num_frames, duration=num_frames / fps)
    # Truncation before frame rate: a file cut inside a frame loses that frame, which looks like an odd interval.
    header = container.duration / av.time_base if container.duration else None
    if header is not None and header - num_frames / fps > max(1.0, 0.1 * header):
        return f"truncated: the header says {header:.1f} s but frames stop at {num_frames / fps:.1f} s; {FIX}"
    if len(intervals):
        # One tick of slack: millisecond timestamps of 30 fps alternate 33/34 ms.
        off = np.abs(intervals - median) > max(cfg.vfr_tolerance * median, 1.0)
        if median <= 0 or off.sum() > max(1, 0.01 * len(intervals)):
            lo, hi = intervals.min() * time_base * 1000, intervals.max() * time_base * 1000
            return f"variable frame rate (frame intervals from {lo:.0f} to {hi:.0f} ms); {FIX}"

    try:
        container.seek(0, stream=stream)
        frame = next(container.decode(stream))
    except (av.FFmpegError, StopIteration) as e:
        return f"cannot decode the first frame ({reason(e) if isinstance(e, av.FFmpegError) else 'no frame'}); {FIX}"
    rotation = int(round(frame.rotation or 0)) % 360
    width, height = stream.codec_context.width, stream.codec_context.height
    if rotation in (90, 270):
        width, height = height, width
    row.update(rotation=rotation, width=width, height=height)
    return ""
