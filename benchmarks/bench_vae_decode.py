"""Speed and peak memory of CogVideoX VAE decoding: ours (eager, fused norms compiled) against diffusers.

Both VAEs get the same random weights (ours is built with a fixed seed, diffusers loads its state_dict); nothing is
downloaded. On the GPU machine (diffusers carried as a wheel):

    python benchmarks/bench_vae_decode.py --json bench_vae.json
    python benchmarks/bench_vae_decode.py --no-diffusers --memory-breakdown   # peak per decoder stage
    python benchmarks/bench_vae_decode.py --no-diffusers --frame-slice 1      # slices of 1 frame instead of 2
    python benchmarks/bench_vae_decode.py --variants fused,sliced             # skip the rest (tiled compiles 72 s)
    python benchmarks/bench_vae_decode.py --variants sliced --profile         # top kernels of one sliced decode

Defaults: the CogVideoX-5B VAE config, 13 x 60 x 90 latents (49 frames at 480 x 720), bf16 on CUDA. On CPU (fp32) use
--tiny, a tiny config of the same kind, to check that the script runs:

    python benchmarks/bench_vae_decode.py --tiny --runs 1

Variants (--variants, all by default): eager (ours), fused (fuse_norms(), compiled), tiled (the same, tiled),
sliced (the same untiled, with the full-resolution level in frame slices, fuse_norms(frame_slice=N): the unsliced
numbers, less memory), diffusers and diffusers-tiled.
Reported per variant: median seconds over --runs timed decodes after one untimed one (compile time falls there and
is reported apart), peak allocated memory during the timed decodes (CUDA; weights and latents included; the previous
decode's output is freed first and the fp32 reference stays on the CPU), and the error
against an fp32 decode with the same weights, max|x - x_fp32| / max|x_fp32|. Our eager bf16 decode's own error is the
bf16 tolerance the other variants are read against.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from vidfusion.io.checkpoint import write_json
from vidfusion.models.vae import VAE_PRESETS, CogVideoXVAE, tiny_random_config

VARIANTS = ("eager", "fused", "tiled", "sliced", "diffusers", "diffusers-tiled")


def timed(fn, runs: int, device: torch.device) -> tuple[float, float, float, torch.Tensor]:
    """(median seconds, first-call seconds, peak GiB over the timed calls, last output)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - start
    del out
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        out = None  # the previous output is freed before the next call, so the peak is one decode's
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), first, peak, out


def memory_breakdown(vae: CogVideoXVAE, z: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per decoder stage (conv_in, mid block, each up block's resnets and upsampler), over all time chunks: the peak
    allocated while it ran and the memory allocated when it started (weights, the chunk's input, and every causal
    conv's cached frames from the previous chunk), in GiB. Frame-sliced, the upsampler feeding the full-resolution
    level runs inside that level's first resnet (which recomputes its output slice by slice): one stage,
    "up{i}.upsample+up{i+1}.res0". The output norm -> conv is not a stage (the fused path calls no module there)."""
    blocks = vae.decoder.up_blocks
    stages = {"conv_in": vae.decoder.conv_in, "mid": vae.decoder.mid_block}
    for i, block in enumerate(blocks):
        for j, resnet in enumerate(block.resnets):
            lazy_upsample = j == 0 and i > 0 and resnet.sliced
            stages[f"up{i - 1}.upsample+up{i}.res0" if lazy_upsample else f"up{i}.res{j}"] = resnet
        if block.upsamplers is not None and not blocks[i + 1].resnets[0].sliced:
            stages[f"up{i}.upsample"] = block.upsamplers[0]
    seen: dict[str, dict[str, float]] = {}

    def before(name):
        def hook(module, args):
            torch.cuda.synchronize()
            entry = seen.setdefault(name, {"peak_gib": 0.0, "at_start_gib": 0.0})
            entry["at_start_gib"] = max(entry["at_start_gib"], torch.cuda.memory_allocated() / 2**30)
            torch.cuda.reset_peak_memory_stats()
        return hook

    def after(name):
        def hook(module, args, out):
            torch.cuda.synchronize()
            seen[name]["peak_gib"] = max(seen[name]["peak_gib"], torch.cuda.max_memory_allocated() / 2**30)
        return hook

    handles = [h for name, m in stages.items()
               for h in (m.register_forward_pre_hook(before(name)), m.register_forward_hook(after(name)))]
    try:
        vae.decode(z)
    finally:
        for h in handles:
            h.remove()
    for name, entry in seen.items():
        print(f"  {name:22s} peak {entry['peak_gib']:6.2f} GiB   allocated at start {entry['at_start_gib']:6.2f} GiB")
    return seen


def profile_decode(vae: CogVideoXVAE, z: torch.Tensor) -> None:
    """Print the kernels that took the most device time in one decode (after the timed ones, so nothing compiles)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA if z.is_cuda else ProfilerActivity.CPU]) as prof:
        vae.decode(z)
        if z.is_cuda:
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if z.is_cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=20, max_name_column_width=80))


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Against the fp32 reference, which stays on the CPU so that it does not count in the GPU peaks."""
    if x.shape != ref.shape:  # diffusers' tiling crops tiny inputs to another size
        return float("nan")
    return ((x.float().cpu() - ref).abs().max() / ref.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    presets = [k for k in VAE_PRESETS if k.startswith("cogvideox")]
    parser.add_argument("--config", default="cogvideox-5b", choices=presets)
    parser.add_argument("--tiny", action="store_true", help="tiny config and small latents (CPU check)")
    parser.add_argument("--latent-frames", type=int, default=13)
    parser.add_argument("--height", type=int, default=480, help="pixel height (latents are height / 8)")
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma list of variants to run, of {','.join(VARIANTS)} (default: all)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers variants")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled fused variants")
    parser.add_argument("--memory-breakdown", action="store_true",
                        help="CUDA: print each decoder stage's peak and what was allocated when it started (fused "
                             "compiled variants, unsliced and frame-sliced)")
    parser.add_argument("--frame-slice", type=int, default=2, metavar="N",
                        help="frames per slice of the fused + frame-sliced variant (full-resolution level)")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one decode of the last variant of ours and print its top kernels")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {','.join(unknown)}; choose from {','.join(VARIANTS)}")
    if args.no_diffusers:
        variants = [v for v in variants if not v.startswith("diffusers")]
    if args.no_compile:
        variants = [v for v in variants if v not in ("fused", "tiled", "sliced")]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = tiny_random_config() if args.tiny else VAE_PRESETS[args.config]
    frames, height, width = (3, 32, 48) if args.tiny else (args.latent_frames, args.height, args.width)
    torch.manual_seed(0)
    vae = CogVideoXVAE(config).eval()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, config.latent_channels, frames, height // 8, width // 8, generator=g)
    results: dict = {"config": "tiny" if args.tiny else args.config, "latents": list(z.shape), "dtype": str(dtype),
                     "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "variants": {}}

    def record(name: str, seconds: float, first: float, peak: float, err: float) -> None:
        results["variants"][name] = {"seconds": seconds, "first_call_seconds": first, "peak_gib": peak, "rel_err": err}
        print(f"{name:26s} {seconds:8.3f} s   first call {first:7.1f} s   peak {peak:6.2f} GiB   err vs fp32 {err:.2e}",
              flush=True)

    with torch.no_grad():
        vae.to(device, torch.float32)
        reference = vae.decode(z.to(device)).float()
        if device.type == "cuda":  # the fp32 reference waits on the CPU so it does not count in the peaks below
            reference = reference.cpu()
        vae.to(device, dtype)
        zd = z.to(device, dtype)
        if "eager" in variants:
            seconds, first, peak, out = timed(lambda: vae.decode(zd), args.runs, device)
            record("ours eager", seconds, first, peak, rel_err(out, reference))
            del out
        if "fused" in variants or "tiled" in variants:
            vae.fuse_norms(compile=True)
        if "fused" in variants:
            seconds, first, peak, out = timed(lambda: vae.decode(zd), args.runs, device)
            record("ours fused (compiled)", seconds, first, peak, rel_err(out, reference))
            del out
            if args.memory_breakdown and device.type == "cuda":
                print("  ours fused (compiled):")
                results["memory_breakdown"] = memory_breakdown(vae, zd)
        if "tiled" in variants:
            # diffusers' spatial tiling (tiles of half the sample size, blended): lower memory, but per-tile
            # GroupNorm statistics and the blending change the result
            vae.enable_tiling()
            seconds, first, peak, out = timed(lambda: vae.decode(zd), args.runs, device)
            record("ours fused + tiled", seconds, first, peak, rel_err(out, reference))
            del out
            vae.disable_tiling()
        if "sliced" in variants:
            # the full-resolution level on frame slices of each time chunk: the untiled numbers, less memory
            vae.fuse_norms(compile=True, frame_slice=args.frame_slice)
            results["frame_slice"] = args.frame_slice
            seconds, first, peak, out = timed(lambda: vae.decode(zd), args.runs, device)
            record("ours fused + frame-sliced", seconds, first, peak, rel_err(out, reference))
            del out
            if args.memory_breakdown and device.type == "cuda":
                print(f"  ours fused + frame-sliced (slices of {args.frame_slice} frames):")
                results["memory_breakdown_frame_sliced"] = memory_breakdown(vae, zd)
        if args.profile:
            profile_decode(vae, zd)
        vae.fuse_norms(enabled=False)
        state = vae.state_dict()
        vae = None  # free it before diffusers loads
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if "diffusers" in variants or "diffusers-tiled" in variants:
            from diffusers import AutoencoderKLCogVideoX

            keys = {k: v for k, v in config.to_dict().items() if k != "decoder_block_out_channels"}
            theirs = AutoencoderKLCogVideoX(**keys)
            theirs.load_state_dict(state, strict=True)
            theirs.to(device, dtype).eval()
            if "diffusers" in variants:
                seconds, first, peak, out = timed(lambda: theirs.decode(zd).sample, args.runs, device)
                record("diffusers", seconds, first, peak, rel_err(out, reference))
                del out
            if "diffusers-tiled" in variants:
                theirs.enable_tiling()
                seconds, first, peak, out = timed(lambda: theirs.decode(zd).sample, args.runs, device)
                record("diffusers tiled", seconds, first, peak, rel_err(out, reference))
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
