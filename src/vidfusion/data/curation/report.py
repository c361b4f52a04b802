"""Summary report: what happened to every input and clip, as report.md, summary.json and one PNG histogram per score.

Histograms (matplotlib, Agg backend, no display) stack kept and dropped clips over the range of the data and mark
the filter thresholds (named in the legend even when they lie outside it), so a threshold that cuts into the bulk of
the data is visible at a glance. Buckets are listed with their clip counts,
and the report warns when the manifest is empty or when captions are empty because no captioner was set.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vidfusion.data.curation.config import CurateConfig
from vidfusion.data.curation.filters import FILTERS
from vidfusion.io.checkpoint import atomic_write, atomic_write_bytes, write_json

# score column -> (filter thresholds drawn on its histogram, axis label)
SCORES = {
    "motion": (("min_motion", "max_motion"), "motion (frame widths per second)"),
    "camera_motion": ((), "camera motion share (0 = fixed camera, 1 = global motion)"),
    "sharpness": (("min_sharpness",), "sharpness (variance of Laplacian)"),
    "brightness": (("min_brightness", "max_brightness"), "brightness (mean luma, 0..1)"),
    "clipped": (("max_clipped",), "share of black or white pixels"),
    "blockiness": (("max_blockiness",), "blockiness (1 = no 8x8 block edges)"),
    "text_area": (("max_text_area",), "text area (share of the frame)"),
    "aesthetic": (("min_aesthetic",), "aesthetic proxy (CLIP, 0..1)"),
    "seconds": (("min_seconds",), "clip length (s)"),
}


def summarize(probe: list[dict], shots: list[dict], judged: list[dict], manifest: list[dict],
              cfg: CurateConfig) -> dict[str, Any]:
    skipped = [{"path": r["path"], "reason": r["reason"]} for r in probe if not r["ok"]]
    broken = [{"path": r["path"], "reason": r["shot_error"]} for r in shots if r["shot_error"]]
    first = Counter(r["dropped_by"][0] for r in judged if r["dropped_by"])
    every = Counter(name for r in judged for name in r["dropped_by"])
    only = Counter(r["dropped_by"][0] for r in judged if len(r["dropped_by"]) == 1)
    filters = {name: {"failed": every[name], "dropped_first": first[name], "only_reason": only[name]}
               for name in [*FILTERS, "no_bucket"] if name in every or name in FILTERS}
    detectors = sorted({r["text_detector"] for r in judged if r["text_detector"]})
    return {
        "inputs": len(probe),
        "skipped_inputs": skipped,
        "decode_errors": broken,
        "videos": sum(r["ok"] for r in probe),
        "cuts": sum(len(r["cuts"]) for r in shots),
        "shots": sum(len(r["shot_starts"]) for r in shots),
        "clips": len(judged),
        "kept": len(manifest),
        "kept_seconds": round(sum(r["end_s"] - r["start_s"] for r in manifest), 2),
        "filters": filters,
        "buckets": dict(sorted(Counter(r["bucket"] for r in manifest).items())),
        "text_detector": ", ".join(detectors) or "none",
        "captions": "model" if cfg.captions.model else "empty",
        "aesthetic": "model" if cfg.quality.aesthetic_model else "off",
    }


def write_report(out: Path, summary: dict[str, Any], judged: list[dict], cfg: CurateConfig) -> Path:
    folder = out / "report"
    write_json(folder / "summary.json", summary)
    for name in SCORES:
        _histogram(folder / f"hist_{name}.png", name, judged, cfg)
    atomic_write_bytes(folder / "report.md", format_report(summary).encode())
    return folder / "report.md"


def format_report(s: dict[str, Any]) -> str:
    lines = ["# Curation report", "",
             f"- inputs: {s['inputs']}, usable videos: {s['videos']}, skipped: {len(s['skipped_inputs'])}, "
             f"decode errors: {len(s['decode_errors'])}",
             f"- cuts: {s['cuts']}, shots: {s['shots']}, clips: {s['clips']}, "
             f"kept: {s['kept']} ({s['kept_seconds']:.1f} s)",
             f"- text detector: {s['text_detector']}; aesthetic plug-in: {s['aesthetic']}"]
    if s["captions"] == "empty":
        lines.append("- captions: EMPTY: no captioner was set (captions.model); every caption in the manifest is \"\"")
    if not s["kept"]:
        lines.append("- WARNING: the manifest is empty; see which filter dropped the clips below and loosen it")
    lines += ["", "## Skipped inputs", ""]
    lines += [f"- {r['path']}: {r['reason']}" for r in s["skipped_inputs"]] or ["- none"]
    lines += [f"- {r['path']}: {r['reason']} (clips come from the frames before it)" for r in s["decode_errors"]]
    lines += ["", "## Filters", "", "| filter | clips failing | dropped (first failing filter) | dropped by it alone |",
              "|---|---|---|---|"]
    lines += [f"| {name} | {v['failed']} | {v['dropped_first']} | {v['only_reason']} |"
              for name, v in s["filters"].items()]
    lines += ["", "## Buckets (short side - aspect - length)", ""]
    lines += [f"- {name}: {count}" for name, count in s["buckets"].items()] or ["- none"]
    lines += ["", "Histograms: hist_<score>.png beside this file.", ""]
    return "\n".join(lines)


def _histogram(path: Path, name: str, judged: list[dict], cfg: CurateConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(r: dict) -> float | None:
        return r["end_s"] - r["start_s"] if name == "seconds" else r[name]

    kept = [value(r) for r in judged if not r["dropped_by"] and value(r) is not None]
    dropped = [value(r) for r in judged if r["dropped_by"] and value(r) is not None]
    keys, label = SCORES[name]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if kept or dropped:
        bins = np.histogram_bin_edges(np.asarray(kept + dropped, dtype=float), bins=30)
        ax.hist([kept, dropped], bins=bins, stacked=True, histtype="stepfilled", color=["tab:green", "tab:gray"],
                label=[f"kept ({len(kept)})", f"dropped ({len(dropped)})"])
        for key, style in zip(keys, ("--", ":")):
            value = getattr(cfg.filters, key)
            ax.axvline(value, color="tab:red", linestyle=style, linewidth=1, label=f"{key} = {value:g}")
        ax.set_xlim(bins[0], bins[-1] if bins[-1] > bins[0] else bins[0] + 1)  # the data, not a far-off threshold
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no values (plug-in off or no clips)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(label)
    ax.set_ylabel("clips")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.96)  # tight_layout doubles the drawing time
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
