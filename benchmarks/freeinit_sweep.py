"""FreeInit sweep: temporal consistency, flicker, motion, prompt adherence and time over filters x passes x re-noise.

    python benchmarks/freeinit_sweep.py --device cuda -n 100 --seeds 0 1 --out runs/freeinit
    python benchmarks/freeinit_sweep.py --measure-renoise          # the re-noise table in freeinit.py's docstring

Every config samples the same prompts (the world's heldout split, its first n captions) with the same seeds, so the
initial noise n0 of a (prompt, seed) pair is shared by all configs and differences are paired; the table gives each
metric's mean and its paired difference from plain sampling with a standard error. "plain" is FreeInit with one
pass, which is plain sampling bit for bit. Later passes enter the --steps grid at the re-noise level and run its
steps from there (20 of 25 at t = 820); --equal-steps 1 runs --steps steps there on a finer grid, --from-top 1 the
whole grid from t = 999, --coarse-to-fine fewer steps on earlier passes. Per video it also records exposure
(brightness, contrast, the share of clipped pixels), which shows blown-out videos. Videos are generated --batch
prompts at a time (the pipeline's own steps: `encode_prompts`, `initial_noise` per seed as `text_to_video` draws it,
`denoise`, `decode`); seconds per video are the batch's generation wall time divided by its size, scoring excluded.

Metrics per video: `evaluation.temporal` (frame consistency with the shipped VAE's features, DIS flicker and motion)
and `evaluation.adherence.score_video` against `world.prompt_attributes`; "adherence" is the mean of the asserted
attributes' scores x 100 (points), "all" the share of videos with every attribute right.

Results go to OUT/results.json after every config and OUT/table.md at the end; re-running the same command skips
configs already in results.json, so a sweep longer than one session resumes (see --time-limit).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from vidfusion.data.world import eval_split, prompt_attributes, scene_and_caption
from vidfusion.diffusion.freeinit import (
    FILTERS,
    FreeInitSettings,
    freeinit_sample,
    low_pass_filter,
    mix_frequencies,
    renoise_timestep,
)
from vidfusion.diffusion.prediction import add_noise
from vidfusion.diffusion.schedule import alphas_cumprod
from vidfusion.evaluation.adherence import score_video
from vidfusion.evaluation.temporal import flow_metrics, frame_consistency, frame_features, load_feature_encoder
from vidfusion.io.checkpoint import read_json, write_json
from vidfusion.io.pretrained import Components, load_pretrained
from vidfusion.io.video import to_uint8_frames
from vidfusion.pipelines.masked_context import empty_context_model_fn, is_context_model
from vidfusion.pipelines.text_to_video import (
    decode,
    denoise,
    encode_prompts,
    initial_noise,
    latent_frames_for,
    sampling_default,
)

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "src" / "vidfusion" / "weights" / "tiny-t2v"
ATTRIBUTES = ("colour", "shape", "motion", "count", "size")
RENOISE_LEVELS = (999, 990, 970, 950, 930, 900, 880, 850, 820, 800, 700, 600, 500)


# ------------------------------------------------------------------------------------------------------ generation


@torch.no_grad()
def generate_batch(components: Components, prompts: list[str], seeds: list[int], settings: FreeInitSettings,
                   num_steps: int, guidance: float, sampler: str, batch_seed: int) -> list[np.ndarray]:
    """uint8 [T, H, W, 3] videos, one per (prompt, seed); n0 of each is what `text_to_video` draws for its seed.

    `batch_seed` seeds FreeInit's fresh noise (and DPM's draws) for the whole batch."""
    transformer = components.transformer
    device, dtype = next(transformer.parameters()).device, next(transformer.parameters()).dtype
    config = transformer.config
    guided = guidance > 1.0
    context = encode_prompts(components, prompts, [""] * len(prompts), guided).to(dtype)
    latent_frames, extra = latent_frames_for(components, config.sample_frames)
    shape = (1, latent_frames, config.out_channels, config.sample_height, config.sample_width)
    noise = torch.cat([initial_noise(shape, torch.Generator("cpu").manual_seed(s), device, dtype) for s in seeds])
    generator = torch.Generator("cpu").manual_seed(batch_seed)

    # A masked-context model samples text-to-video from an empty context, as text_to_video does for it.
    model_fn = empty_context_model_fn(components) if is_context_model(components) else None

    def sample(x: torch.Tensor, steps: int, label: str, start: int | None = None) -> torch.Tensor:
        return denoise(components, x, context, steps, guidance, sampler, False, generator, False, model_fn, start)

    latents = freeinit_sample(sample, noise, components.schedule, settings, num_steps, generator)
    video = decode(components, latents, extra)  # [B, 3, T, H, W]
    return [to_uint8_frames(v.transpose(0, 1).float().cpu()) for v in video]


def adherence_points(scores: dict) -> float:
    values = [scores[a] for a in ATTRIBUTES if scores.get(a) is not None]
    return 100.0 * float(np.mean(values))


def exposure(video: np.ndarray) -> dict:
    """Brightness (mean, 0-255), contrast (mean per-frame std) and the share of near-white or near-black pixels
    (every channel >= 245 or <= 10): a blown-out video is flat and mostly clipped, and has no flicker to measure."""
    v = video.astype(np.float32)
    clipped = (video >= 245).all(axis=-1) | (video <= 10).all(axis=-1)
    return {"brightness": float(v.mean()), "contrast": float(v.reshape(v.shape[0], -1).std(axis=1).mean()),
            "clipped": float(clipped.mean())}


def score_batch(videos: list[np.ndarray], attributes: list[dict], encoder, pool: ThreadPoolExecutor) -> list[dict]:
    # Flow and the adherence checker are OpenCV/numpy on the CPU (threads release the GIL there); features use the
    # encoder's device.
    def cpu_part(args):
        video, attrs = args
        scores = score_video(video, attrs)
        # Attribute scores get a prefix: "motion" is already the flow's motion magnitude.
        return {**flow_metrics(video), "adherence": adherence_points(scores), "all": scores["all"],
                **{f"adherence_{a}": scores[a] for a in ATTRIBUTES}, **exposure(video)}

    futures = pool.map(cpu_part, zip(videos, attributes))
    consistency = [frame_consistency(frame_features(v, encoder)) for v in videos]
    return [{"frame_consistency": c, **row} for c, row in zip(consistency, futures)]


# ------------------------------------------------------------------------------------------------------ configs


def config_name(settings: FreeInitSettings, t: int) -> str:
    if settings.passes == 1:
        return "plain"
    c2f = " c2f" if settings.coarse_to_fine else ""
    top = "" if settings.start_at_renoise else " from-top"
    equal = " eq" if settings.equal_steps else ""
    return f"{settings.filter} x{settings.passes} t{t}{c2f}{top}{equal}"


def sweep_configs(args: argparse.Namespace, components: Components) -> list[tuple[str, FreeInitSettings, int]]:
    configs = [("plain", FreeInitSettings(passes=1), -1)]
    renoise = args.renoise or [renoise_timestep(components.schedule, FreeInitSettings())]
    for kind, passes, t in itertools.product(args.filters, args.passes, renoise):
        if passes > 1:
            for from_top, equal in itertools.product(args.from_top, args.equal_steps):
                if from_top and equal:
                    continue  # from the top every pass runs all its steps already
                settings = FreeInitSettings(passes=passes, filter=kind, d_s=args.ds, d_t=args.dt,
                                            renoise_timestep=t, coarse_to_fine=args.coarse_to_fine,
                                            start_at_renoise=not from_top, equal_steps=bool(equal))
                configs.append((config_name(settings, t), settings, t))
    return configs


def summarise(rows: list[dict], plain: list[dict] | None) -> dict:
    out = {"n": len(rows)}
    for key in ("frame_consistency", "flicker", "motion", "adherence", "all", "seconds"):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = float(values.mean())
        if plain is not None and key != "seconds":
            diff = values - np.array([p[key] for p in plain], dtype=np.float64)
            out[f"d_{key}"] = float(diff.mean())
            out[f"se_{key}"] = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return out


def markdown_table(results: dict, alphabar: torch.Tensor) -> str:
    plain_s = results["configs"]["plain"]["summary"]["seconds"] if "plain" in results["configs"] else float("nan")
    header = ("| config | re-noise t (alphabar) | consistency x100 | d vs plain | flicker | d vs plain | motion px "
              "| adherence pts | d vs plain | all | s/video | cost |")
    lines = [header,
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def delta(s: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
        if f"d_{key}" not in s:
            return ""
        return f"{s[f'd_{key}'] * scale:+.{digits}f} ± {s[f'se_{key}'] * scale:.{digits}f}"

    for name, entry in results["configs"].items():
        s, t = entry["summary"], entry["renoise_timestep"]
        level = "" if t < 0 else f"{t} ({alphabar[t].item():.4f})"
        lines.append(
            f"| {name} | {level} | {100 * s['frame_consistency']:.2f} | {delta(s, 'frame_consistency', 100)} | "
            f"{s['flicker']:.2f} | {delta(s, 'flicker')} | {s['motion']:.2f} | {s['adherence']:.1f} | "
            f"{delta(s, 'adherence', digits=1)} | {s['all']:.3f} | {s['seconds']:.3f} | "
            f"{s['seconds'] / plain_s:.2f}x |")
    return "\n".join(lines)


def run_sweep(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = Path(args.model or SHIPPED_MODEL)
    components = load_pretrained(model, device=device, dtype=dtype)
    encoder = load_feature_encoder(args.feature_vae, device)
    num_steps = sampling_default(components.defaults, "num_steps", args.steps)
    guidance = sampling_default(components.defaults, "guidance_scale", args.guidance)
    sampler = args.sampler or components.default_sampler
    prompts, attributes = [], []
    for index in range(args.first, args.first + args.n):
        scene, caption, _ = scene_and_caption(index, "heldout")
        prompts.append(caption)
        attributes.append(prompt_attributes(scene))
    pairs = [(i, s) for i in range(args.n) for s in args.seeds]  # every (prompt, seed) video

    run = {"model": str(model), "n": args.n, "seeds": args.seeds, "num_steps": num_steps, "guidance_scale": guidance,
           "sampler": sampler, "dtype": args.dtype, "d_s": args.ds, "d_t": args.dt, "batch": args.batch}
    if args.first:
        run["first"] = args.first  # only when set, so results of earlier runs still resume
    out = Path(args.out)
    results_path = out / "results.json"
    results = read_json(results_path) if results_path.is_file() else {"run": run, "configs": {}}
    if results["run"] != run:
        raise SystemExit(f"{results_path} holds a run with other settings ({results['run']}); use another --out")
    configs = sweep_configs(args, components)
    print(f"{len(configs)} configs x {len(pairs)} videos, {num_steps} steps per pass, guidance {guidance}, "
          f"{sampler}, {args.dtype} on {device}", flush=True)
    pool = ThreadPoolExecutor(args.workers)
    for name, settings, t in configs:
        if name in results["configs"]:
            continue
        if args.time_limit and time.perf_counter() - start > args.time_limit:
            print(f"time limit reached; run the same command again to continue from {name}", flush=True)
            break
        config_start = time.perf_counter()
        rows = []
        for b in range(0, len(pairs), args.batch):
            batch = pairs[b:b + args.batch]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tick = time.perf_counter()
            # The batch seed depends on the batch's first pair only, so a config's videos do not depend on which
            # configs ran before it.
            videos = generate_batch(components, [prompts[i] for i, _ in batch], [s for _, s in batch], settings,
                                    num_steps, guidance, sampler, batch_seed=1_000_003 * batch[0][1] + batch[0][0])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - tick) / len(batch)
            scores = score_batch(videos, [attributes[i] for i, _ in batch], encoder, pool)
            rows += [{"index": args.first + i, "seed": s, "seconds": seconds, **sc} for (i, s), sc in zip(batch, scores)]
        plain = results["configs"].get("plain", {}).get("rows") if name != "plain" else None
        summary = summarise(rows, plain)
        results["configs"][name] = {"settings": dataclasses.asdict(settings),
                                    "renoise_timestep": t, "summary": summary, "rows": rows}
        write_json(results_path, results)
        print(f"{name}: consistency {summary['frame_consistency']:.4f} flicker {summary['flicker']:.2f} "
              f"motion {summary['motion']:.2f} adherence {summary['adherence']:.1f} "
              f"({time.perf_counter() - config_start:.0f} s)", flush=True)
    table = markdown_table(results, alphas_cumprod(components.schedule))
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"wrote {results_path} and {out / 'table.md'} ({time.perf_counter() - start:.0f} s)")


# ------------------------------------------------------------------------------------------------------ re-noise level


@torch.no_grad()
def measure_renoise(args: argparse.Namespace) -> None:
    """How much of the clean latent's low band survives re-noising at each level, on world clips' VAE latents."""
    components = load_pretrained(Path(args.model or SHIPPED_MODEL), text_encoder=False)
    vae = components.vae
    clips = eval_split("val", args.clips)
    x = torch.stack([torch.from_numpy(c.video) for c in clips]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    x0 = vae.encode(x).mode() * vae.config.scaling_factor  # [B, C, F, h, w], as the DiT sees latents
    grid = tuple(x0.shape[2:])
    generator = torch.Generator().manual_seed(0)
    n0, fresh = (torch.randn(x0.shape, generator=generator) for _ in range(2))
    ab = alphas_cumprod(components.schedule)
    lpf = low_pass_filter(grid, "butterworth", args.ds, args.dt)

    def low_band(z: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifftn(torch.fft.fftn(z, dim=(2, 3, 4)) * lpf, dim=(2, 3, 4)).real

    x0_low, n0_low = low_band(x0), low_band(n0)
    print(f"{len(clips)} world val clips, latents {list(x0.shape)} (std {x0.std():.3f}); Butterworth "
          f"d_s={args.ds} d_t={args.dt}: the low band holds {x0_low.pow(2).sum() / x0.pow(2).sum():.3f} of x0's "
          f"energy and {n0_low.pow(2).sum() / n0.pow(2).sum():.4f} of the noise's")
    print("| t | alphabar | signal share of z's low band | init std | corr(init low band, x0 low band) |")
    print("|---|---|---|---|---|")
    for t in RENOISE_LEVELS:
        signal = ab[t].item() * x0_low.pow(2).sum().item()
        noise = (1 - ab[t].item()) * n0_low.pow(2).sum().item()
        init = mix_frequencies(add_noise(ab, x0, n0, t), fresh, lpf, "bcfhw")
        corr = torch.nn.functional.cosine_similarity(low_band(init).flatten(1), x0_low.flatten(1)).mean().item()
        print(f"| {t} | {ab[t].item():.5f} | {signal / (signal + noise):.3f} | {init.std():.3f} | {corr:.3f} |")
    print("\nvariance of the mix of two independent N(0, I) draws of shape [64, 16, *grid]:")
    a, b = (torch.randn(64, 16, *grid, generator=generator) for _ in range(2))
    for kind in FILTERS:
        lpf_k = low_pass_filter(grid, kind, args.ds, args.dt)
        kept = mix_frequencies(a, b, lpf_k, "bcfhw", True).var().item()
        paper = mix_frequencies(a, b, lpf_k, "bcfhw", False).var().item()
        expected = (lpf_k**2 + (1 - lpf_k) ** 2).mean().item()  # 1 for preserve_variance
        print(f"  {kind:<12} preserve_variance {kept:.4f}   paper weights (1 - L) {paper:.4f} "
              f"(expected {expected:.4f}; the inputs' own variance is {a.var().item():.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped tiny model)")
    parser.add_argument("-n", type=int, default=100, help="heldout prompts (the split's first n captions)")
    parser.add_argument("--first", type=int, default=0,
                        help="start at this heldout index (e.g. 100: prompts not used to choose the defaults)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=None, help="steps per pass (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--sampler", default=None, help="ddim or dpm (default: the model's)")
    parser.add_argument("--filters", nargs="+", default=list(FILTERS), choices=FILTERS)
    parser.add_argument("--passes", type=int, nargs="+", default=[3])
    parser.add_argument("--renoise", type=int, nargs="+", default=None,
                        help="re-noise timesteps (default: FreeInit's default level)")
    parser.add_argument("--ds", type=float, default=0.25)
    parser.add_argument("--dt", type=float, default=0.25)
    parser.add_argument("--coarse-to-fine", action="store_true")
    parser.add_argument("--from-top", type=int, nargs="+", default=[0], choices=[0, 1],
                        help="1: later passes sample from t = 999 (the paper; before session 11); '0 1' runs both")
    parser.add_argument("--equal-steps", type=int, nargs="+", default=[0], choices=[0, 1],
                        help="1: later passes run --steps steps below the re-noise level (a finer grid); '0 1' both")
    parser.add_argument("--batch", type=int, default=50, help="videos generated at once")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--feature-vae", default=None, help="VAE for consistency features (default: the shipped one)")
    parser.add_argument("--workers", type=int, default=8, help="CPU threads for flow and adherence scoring")
    parser.add_argument("--out", default="runs/freeinit_sweep")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds after which no new config starts (re-run to resume)")
    parser.add_argument("--measure-renoise", action="store_true", help="print the re-noise level table and exit")
    parser.add_argument("--clips", type=int, default=16, help="world clips for --measure-renoise")
    args = parser.parse_args()
    if args.measure_renoise:
        measure_renoise(args)
    else:
        run_sweep(args)


if __name__ == "__main__":
    main()
