"""Multi-GPU speed-up of one CFG step: CFG parallel and Ulysses sequence parallel against one GPU of the same machine.

    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --config 5b --json bench_parallel.json   # CFG x2
    torchrun --nproc-per-node 4 benchmarks/bench_parallel.py --config 5b                              # CFG 2 x SP 2
    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --config 5b --degrees 1,2                # SP x2 alone
    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --vae [--vae-fuse]                       # VAE tiles
    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --tiny --steps 2 --warmup 1              # CPU (gloo)

`--vae` times the CogVideoX-5B VAE's tiled decode of 13 x 60 x 90 latents instead (`enable_tiling()`, eager, or
fused and compiled with --vae-fuse), on one GPU and with its tiles split over the ranks (`split_vae_tiles`); the
error is then against rank 0's single-GPU tiled decode.

Every rank builds the same random transformer (fixed seed) and the same [negative; positive] inputs, bf16 on CUDA.
Rank 0 first times the whole CFG step (one forward at batch 2) alone on its GPU while the other ranks wait; then all
ranks time the parallel step (`vidfusion.parallel.parallelize`, degrees from `parallel_degrees`). Reported: median
seconds per step each way, the speed-up, and the max relative error of the parallel output against rank 0's
single-GPU output. Timing the baseline in the same job on the same machine keeps the ratio honest on noisy hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from bench_inference import CONFIGS, benchmark_shape, time_steps  # noqa: E402

from vidfusion.io.checkpoint import write_json  # noqa: E402
from vidfusion.models.transformer import CogVideoXTransformer  # noqa: E402
from vidfusion.models.vae import VAE_PRESETS, CogVideoXVAE, tiny_random_config  # noqa: E402
from vidfusion.parallel import (  # noqa: E402
    destroy_distributed,
    init_distributed,
    make_parallel_groups,
    parallel_degrees,
    parallelize,
    split_vae_tiles,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="5b", choices=sorted(CONFIGS))
    parser.add_argument("--tiny", action="store_true", help="tiny config and small latents (CPU check)")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--text-tokens", type=int, default=226)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--degrees", default=None, metavar="CFG,SP",
                        help="CFG and sequence-parallel degrees (default: parallel_degrees, CFG 2 when even)")
    parser.add_argument("--vae", action="store_true", help="time the 5B VAE's tiled decode instead")
    parser.add_argument("--vae-fuse", action="store_true", help="with --vae: fused, compiled norms")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()

    state = init_distributed()
    if args.vae:
        return bench_vae(args, state)
    degrees = (tuple(int(d) for d in args.degrees.split(",")) if args.degrees
               else parallel_degrees(state.world_size, guided=True))
    state = make_parallel_groups(state, *degrees)
    device = state.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config, (latent_f, latent_h, latent_w), text_tokens = benchmark_shape(args)

    torch.manual_seed(0)
    with torch.device(device):
        model = CogVideoXTransformer(config).to(dtype).eval()
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(2, latent_f, config.in_channels, latent_h, latent_w, generator=g, device=device, dtype=dtype)
    context = torch.randn(2, text_tokens, config.text_embed_dim, generator=g, device=device, dtype=dtype)
    t = torch.tensor([500, 500], device=device)

    with torch.no_grad():
        single, reference = None, None
        if state.is_main:
            single = time_steps(lambda: model(x, context, t), args.warmup, args.steps, device)
            reference = model(x, context, t).float()
        if state.world_size > 1:
            dist.barrier()
        model_fn = parallelize(model, state)
        parallel = time_steps(lambda: model_fn(x, context, t), args.warmup, args.steps, device)
        out = model_fn(x, context, t).float()

    if state.is_main:
        one, many = statistics.median(single), statistics.median(parallel)
        err = ((out - reference).abs().max() / reference.abs().max()).item()
        cfg_degree, sp_degree = degrees
        result = {
            "config": ("tiny-" if args.tiny else "") + args.config, "latents": [latent_f, latent_h, latent_w],
            "text_tokens": text_tokens, "dtype": str(dtype).removeprefix("torch."), "processes": state.world_size,
            "cfg_degree": cfg_degree, "sp_degree": sp_degree, "steps": args.steps, "warmup": args.warmup,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "single_s_per_step": round(one, 4), "parallel_s_per_step": round(many, 4),
            "speedup": round(one / many, 3), "max_rel_err_vs_single": err,
            "single_all_s": [round(s, 4) for s in single], "parallel_all_s": [round(s, 4) for s in parallel],
        }
        report(result, f"1 process: {one:.4f} s/step; {state.world_size} processes (CFG {cfg_degree} x SP "
                       f"{sp_degree}): {many:.4f} s/step; speed-up {one / many:.2f}x; max rel. error {err:.2e}",
               args.json)
    destroy_distributed()


def report(result: dict, line: str, json_path: str | None) -> None:
    """Rank 0's output: the result as one JSON line, a sentence, and the JSON file if asked for."""
    print(json.dumps(result), flush=True)
    print(line, flush=True)
    if json_path:
        write_json(json_path, result)


def bench_vae(args: argparse.Namespace, state) -> None:
    device = state.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = tiny_random_config() if args.tiny else VAE_PRESETS["cogvideox-5b"]
    shape = (3, 8, 12) if args.tiny else (13, args.height // 8, args.width // 8)
    torch.manual_seed(0)
    vae = CogVideoXVAE(config).to(device, dtype).eval()
    if args.tiny:
        vae.enable_tiling(32, 48)
    else:
        vae.enable_tiling()
    if args.vae_fuse:
        vae.fuse_norms()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, config.latent_channels, *shape, generator=g).to(device, dtype)
    with torch.no_grad():
        single, reference = None, None
        if state.is_main:
            single = time_steps(lambda: vae.decode(z), args.warmup, args.steps, device)
            reference = vae.decode(z).float()
        if state.world_size > 1:
            dist.barrier()
        split_vae_tiles(vae)
        parallel = time_steps(lambda: vae.decode(z), args.warmup, args.steps, device)
        out = vae.decode(z).float()
    if state.is_main:
        one, many = statistics.median(single), statistics.median(parallel)
        err = ((out - reference).abs().max() / reference.abs().max()).item()
        result = {
            "config": "tiny-vae" if args.tiny else "cogvideox-5b-vae", "latents": list(z.shape),
            "dtype": str(dtype).removeprefix("torch."), "processes": state.world_size, "fused": args.vae_fuse,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "single_s": round(one, 4), "parallel_s": round(many, 4), "speedup": round(one / many, 3),
            "max_rel_err_vs_single": err,
        }
        report(result, f"tiled VAE decode, 1 process: {one:.4f} s; {state.world_size} processes: {many:.4f} s; "
                       f"speed-up {one / many:.2f}x; max rel. error {err:.2e}", args.json)
    destroy_distributed()


if __name__ == "__main__":
    main()
