"""Streaming decode with PyAV for the curation stages: frames in order, only the wanted ones converted and downscaled.

`vidfusion.io.video.read_video` loads a whole clip into memory at full size; curation needs one pass over files of
any length that keeps nothing but the current frame, so it has its own loop. Frame numbers are decode-order counts,
the same in every stage (probe has rejected variable-frame-rate files, so a count is a fixed time).
"""

from __future__ import annotations

from typing import Iterator

import av
import numpy as np


class DecodeError(Exception):
    """Decoding stopped at frame `index` (the frames before it were fine)."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"decoding failed at frame {index} ({reason})")
        self.index = index


def reason(error: BaseException) -> str:
    # FFmpeg errors print as "[Errno 1094995529] Invalid data found when processing input: 'path'": keep the middle.
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def scaled_size(width: int, height: int, target_width: int | None) -> tuple[int, int]:
    """(width, height) scaled to `target_width` (never up), both even so that chroma planes stay whole."""
    if target_width is None or target_width >= width:
        return width, height
    return target_width - target_width % 2, max(2, round(height * target_width / width / 2) * 2)


def iter_frames(path: str, wanted: set[int] | None = None, width: int | None = None,
                fmt: str = "bgr24") -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, frame) for the frames in `wanted` (all when None) as `fmt` arrays ("bgr24", "rgb24", "gray"),
    downscaled to `width`. Stops after the last wanted frame; raises DecodeError if the file breaks off early."""
    if wanted is not None and not wanted:
        return
    last = None if wanted is None else max(wanted)
    index = -1
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        w, h = scaled_size(stream.codec_context.width, stream.codec_context.height, width)
        try:
            for index, frame in enumerate(container.decode(stream)):
                if wanted is None or index in wanted:
                    yield index, frame.to_ndarray(format=fmt, width=w, height=h, interpolation="AREA")
                if last is not None and index >= last:
                    return
        except av.FFmpegError as e:
            raise DecodeError(index + 1, reason(e)) from e
    if last is not None and index < last:
        raise DecodeError(index + 1, f"the file ends after {index + 1} frames")
