"""Wall time and peak memory of `vidfusion generate` with the shipped model, as a user runs it.

    python benchmarks/bench_generate_cpu.py ["PROMPT" ...] [--runs 3]

Each run is a fresh process under /usr/bin/time -v (so model load, imports and the mp4 write all count); the script
prints per-run wall seconds and maximum resident set size, then the median.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def measure(prompt: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.mp4"
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "vidfusion.cli", "generate", prompt, "-o", str(out), "-q",
               *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
        hours, minutes, seconds = wall.groups()
        wall_s = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        return {"prompt": prompt, "wall_s": round(wall_s, 2), "max_rss_gb": round(rss_kb / 2**20, 3),
                "summary": proc.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompts", nargs="*", default=["a red circle moving to the right"])
    parser.add_argument("--runs", type=int, default=3)
    args, extra = parser.parse_known_args()
    results = [measure(p, extra) for p in args.prompts for _ in range(args.runs)]
    for r in results:
        print(json.dumps(r))
    print(json.dumps({"median_wall_s": statistics.median(r["wall_s"] for r in results),
                      "max_rss_gb": max(r["max_rss_gb"] for r in results)}))


if __name__ == "__main__":
    main()
