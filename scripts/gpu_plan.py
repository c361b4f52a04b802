"""Sizing helpers for scripts/train_tiny_gpu.sh: training rates from metrics.jsonl and the latest checkpoint's step.

    python3 scripts/gpu_plan.py rate RUN_DIR BATCH      -> optimiser steps per second over the last logged windows
    python3 scripts/gpu_plan.py step RUN_DIR            -> step of the latest checkpoint (0 if none)
    python3 scripts/gpu_plan.py fill RUN_DIR BATCH SEC  -> latest step + steps that fit in SEC seconds
    python3 scripts/gpu_plan.py snapshot RUN_DIR FOLDER -> the latest DiT checkpoint's EMA as a bf16 transformer folder
                                                          (insurance mid-run: a lost machine keeps these weights)
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
    elif command == "snapshot":
        import torch

        from vidfusion.io.checkpoint import read_json, read_state_dict, save_state_dict, write_json

        folder = latest_checkpoint(Path(run) / "checkpoints")
        out = Path(sys.argv[3])
        save_state_dict(read_state_dict(folder, "ema"), out, "diffusion_pytorch_model", 15 * 1024 * 1024,
                        torch.bfloat16)
        write_json(out / "config.json", read_json(folder / "train_state.json")["transformer_config"])
        print(f"snapshot of {folder} -> {out}")
    elif command == "fill":
        print(step(run) + int(rate(run, int(sys.argv[3])) * float(sys.argv[4])))
