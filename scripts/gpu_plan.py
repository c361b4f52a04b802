"""Sizing helpers for scripts/train_tiny_gpu.sh: training rates from metrics.jsonl and the latest checkpoint's step.

    python3 scripts/gpu_plan.py rate RUN_DIR BATCH      -> optimiser steps per second over the last logged windows
    python3 scripts/gpu_plan.py step RUN_DIR            -> step of the latest checkpoint (0 if none)
    python3 scripts/gpu_plan.py fill RUN_DIR BATCH SEC  -> latest step + steps that fit in SEC seconds
"""

import json
import statistics
import sys
from pathlib import Path

from vidfusion.training.checkpointing import latest_checkpoint


def rate(run: str, batch: int) -> float:
    rows = [json.loads(line) for line in open(Path(run) / "metrics.jsonl") if "throughput/clips_per_s" in line]
    return statistics.median(r["throughput/clips_per_s"] for r in rows[-6:]) / batch


def step(run: str) -> int:
    folder = latest_checkpoint(Path(run) / "checkpoints")
    return 0 if folder is None else int(folder.name.split("_")[-1])


if __name__ == "__main__":
    command, run = sys.argv[1], sys.argv[2]
    if command == "rate":
        print(f"{rate(run, int(sys.argv[3])):.3f}")
    elif command == "step":
        print(step(run))
    elif command == "fill":
        print(step(run) + int(rate(run, int(sys.argv[3])) * float(sys.argv[4])))
