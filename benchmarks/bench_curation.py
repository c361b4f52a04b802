"""Curation measurements on the shared real clips (../shared/data/videos, or --videos).

    python benchmarks/bench_curation.py speed [--copies 4] [--workers 2]
        probe + shots + clips + motion on `copies` links to big_buck_bunny_0_30.webm (1280x720, 30 s): wall time
        and minutes of 720p video per minute of wall time (the real-time factor). Fresh output folder, so nothing
        is resumed; process start-up and imports count.
    python benchmarks/bench_curation.py cuts [--frames 0]
        cut detection with known answers: every Intel clip (20 sign-language clips, then the three long ones, each cut
        to --frames frames if > 0) re-encoded to 320x240 and joined end to end, so the cuts are the joins. Precision
        and recall within 2 frames; then the cuts found in the four Blender clips beside CREDITS.md's list.
    python benchmarks/bench_curation.py motion
        motion score of every shot of the Blender clips and of every Intel (fixed camera) clip.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vidfusion.data.curation.config import CurateConfig, MotionConfig, ProbeConfig, ShotConfig
from vidfusion.data.curation.motion import score_clips
from vidfusion.data.curation.probe import probe_file
from vidfusion.data.curation.runner import curate
from vidfusion.data.curation.shots import detect_shots

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
CREDITS = {"clip_01_tears_of_steel.mp4": [21, 65, 185], "clip_02_caminandes.mp4": [103],
           "clip_03_sintel.mp4": [76, 96, 118, 140, 209], "big_buck_bunny_0_30.webm": [283, 376, 551]}


def intel_clips(videos: Path) -> list[str]:
    intel = videos / "intel"
    return sorted(glob.glob(str(intel / "asl_gestures" / "*.mkv"))) + sorted(glob.glob(str(intel / "*.mp4")))


def cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def speed(videos: Path, copies: int, workers: int) -> None:
    source = videos / "blender" / "big_buck_bunny_0_30.webm"
    seconds = probe_file(str(source), ProbeConfig())["duration"] * copies
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(copies):
            os.symlink(source, Path(tmp) / f"bunny_{i}.webm")
        start, cpu_start = time.perf_counter(), cpu_seconds()
        curate([tmp], Path(tmp) / "out", CurateConfig(), workers=workers, progress=False, until="motion")
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    rate = seconds / wall
    print(f"probe+shots+clips+motion: {copies} x 30 s of 1280x720 VP8 = {seconds / 60:.1f} min of video in "
          f"{wall:.1f} s with {workers} workers: {rate:.1f} min of video per min of wall time ({rate:.1f}x real time); "
          f"{cpu:.1f} CPU s in all, {seconds / cpu:.1f} s of video per CPU s; load average before {load:.2f} (other "
          f"processes share the cores)")


def join(paths: list[str], out: str, frames: int) -> list[int]:
    """Decode each clip at 320x240, write them end to end; returns the first frame of every clip but the first."""
    from fractions import Fraction

    import av

    cuts, count = [], 0
    with av.open(out, "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for path in paths:
            if count:
                cuts.append(count)
            with av.open(path) as source:
                for i, frame in enumerate(source.decode(video=0)):
                    if frames and i == frames:
                        break
                    rgb = frame.to_ndarray(format="rgb24", width=320, height=240, interpolation="AREA")
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
                    count += 1
        container.mux(stream.encode())
    return cuts


def precision_recall(found: list[int], truth: list[int], tolerance: int = 2) -> tuple[float, float]:
    hits = sum(any(abs(f - t) <= tolerance for f in found) for t in truth)
    true_found = sum(any(abs(f - t) <= tolerance for t in truth) for f in found)
    return true_found / max(len(found), 1), hits / max(len(truth), 1)


def cuts(videos: Path, frames: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "joined.mp4")
        truth = join(intel_clips(videos), path, frames)
        start = time.perf_counter()
        found = detect_shots(path, 30.0, ShotConfig())["cuts"]
        wall = time.perf_counter() - start
    p, r = precision_recall(found, truth)
    missed = [t for t in truth if not any(abs(f - t) <= 2 for f in found)]
    extra = [f for f in found if not any(abs(f - t) <= 2 for t in truth)]
    print(f"joined Intel clips: {len(truth)} cuts, {len(found)} found in {wall:.1f} s: precision {p:.3f}, "
          f"recall {r:.3f} (within 2 frames); missed {missed}, extra {extra}")
    for name, listed in CREDITS.items():
        path = str(videos / "blender" / name)
        out = detect_shots(path, probe_file(path, ProbeConfig())["fps"], ShotConfig())
        fades = list(zip(out["fade_starts"], out["fade_ends"]))
        print(f"{name}: cuts {out['cuts']}, fades {fades}; CREDITS.md {listed}")


def motion(videos: Path) -> None:
    cfg = MotionConfig()
    groups: dict[str, list[float]] = {}
    for name in CREDITS:
        path = str(videos / "blender" / name)
        fps = probe_file(path, ProbeConfig())["fps"]
        shots = detect_shots(path, fps, ShotConfig())
        spans = zip(shots["shot_starts"], shots["shot_ends"])
        clips = [{"start": a, "end": b, "fps": fps} for a, b in spans if b - a >= 8]
        scores = [s["motion"] for s in score_clips(path, clips, cfg)]
        groups[f"blender/{name}"] = scores
        print(f"blender/{name}: per shot {[round(s, 3) for s in scores]}")
    intel = []
    for path in intel_clips(videos):
        row = probe_file(path, ProbeConfig())
        intel.append(score_clips(path, [{"start": 0, "end": row["num_frames"], "fps": row["fps"]}], cfg)[0]["motion"])
    print(f"intel (fixed camera, {len(intel)} clips): {[round(s, 3) for s in intel]}")
    action = groups["blender/clip_03_sintel.mp4"] + groups["blender/clip_01_tears_of_steel.mp4"]
    print(f"intel median {statistics.median(intel):.3f} max {max(intel):.3f}; sintel+tears_of_steel shots median "
          f"{statistics.median(action):.3f}, sintel shots min {min(groups['blender/clip_03_sintel.mp4']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "cuts", "motion"])
    parser.add_argument("--videos", type=Path, default=VIDEOS)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=0, help="cuts: frames taken from each clip (0 = all)")
    args = parser.parse_args()
    if not args.videos.is_dir():
        sys.exit(f"{args.videos} not found; pass --videos")
    {"speed": lambda: speed(args.videos, args.copies, args.workers), "cuts": lambda: cuts(args.videos, args.frames),
     "motion": lambda: motion(args.videos)}[args.what]()


if __name__ == "__main__":
    main()
