"""Inference speed of one CFG step: our CogVideoXTransformer against diffusers' CogVideoXTransformer3DModel.

Both models get the same random weights (ours is built, diffusers loads its state_dict) and the same inputs; nothing
is downloaded. One CFG step of CogVideoX is one forward at batch 2 (negative and positive prompt). On the GPU machine:

    python benchmarks/bench_inference.py --config 5b --json bench_5b.json
    python benchmarks/bench_inference.py --config 2b --compile --attention cudnn

Defaults: 49 frames at 480x720 (13 x 60 x 90 latents, 17550 video tokens), 226 text tokens, bf16 on CUDA. On CPU
(fp32) use --tiny, a tiny config of the same kind, to check that the script runs:

    python benchmarks/bench_inference.py --tiny --steps 2 --warmup 1

Reported per implementation: median seconds per step over --steps timed steps after --warmup untimed ones (compile
time falls in the warmup), achieved TFLOP/s, peak allocated memory (CUDA), and the max relative error of ours against
diffusers, max|ours - diffusers| / max|diffusers|. Each model is timed alone on the GPU (the other one is on the CPU), so
peak memory is its weights plus its activations.

FLOPs per step (multiply-add = 2), batch B, layers N_l, hidden D, text tokens L, video tokens V, S = L + V:

    B * ( N_l * (24 * S * D^2 + 4 * S^2 * D)  +  2 * L * T * D  +  2 * V * P_in * D  +  2 * V * D * P_out )

24 S D^2 per layer = q, k, v and output projections (4 x 2 S D^2) + MLP D -> 4D -> D (2 x 8 S D^2); 4 S^2 D = QK^T
and AV over all heads; then the text projection (T = text_embed_dim), the patch embedding (P_in = in_channels * p^2 *
p_t) and the output projection (P_out = out_channels * p^2 * p_t). Per-sample adaLN and timestep linears, norms,
RoPE and softmax are not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # from_config needs no files; make sure nothing is fetched

import torch

from vidfusion.io.checkpoint import write_json
from vidfusion.models.transformer import (
    ATTENTION_BACKENDS,
    ATTENTION_CHOICES,
    TRANSFORMER_PRESETS,
    CogVideoXTransformer,
    TransformerConfig,
    rope_3d,
    set_attention_backend,
    tiny_config,
)
from torch.nn.attention import sdpa_kernel

CONFIGS = {"2b": "cogvideox-2b", "5b": "cogvideox-5b"}


def step_flops(config: TransformerConfig, video_tokens: int, text_tokens: int, batch: int) -> float:
    """The formula in the module docstring."""
    d, s = config.inner_dim, video_tokens + text_tokens
    patch = config.patch_size**2 * (config.patch_size_t or 1)
    per_layer = 24 * s * d * d + 4 * s * s * d
    embed = 2 * text_tokens * config.text_embed_dim * d + 2 * video_tokens * d * patch * (
        config.in_channels + config.out_channels
    )
    return batch * (config.num_layers * per_layer + embed)


def benchmark_shape(args: argparse.Namespace) -> tuple[TransformerConfig, tuple[int, int, int], int]:
    """(transformer config, latent frames / height / width, text tokens) from --config, --tiny and the video size."""
    preset = CONFIGS[args.config]
    if args.tiny:
        config = tiny_config(preset)
        return config, (3, 8, 12), config.max_text_seq_length
    latents = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    return TRANSFORMER_PRESETS[preset], latents, args.text_tokens


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, warmup: int, steps: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, fn, args, flops: float, device: torch.device) -> tuple[dict, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(fn, args.warmup, args.steps, device)
    out = fn().float()
    sec = statistics.median(times)
    result = {
        "s_per_step": round(sec, 4),
        "tflops": round(flops / sec / 1e12, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "all_s": [round(t, 4) for t in times],
    }
    print(f"{name:>9}: {sec:.4f} s/step  {result['tflops']:.1f} TFLOP/s  peak {result['peak_gib']} GiB", flush=True)
    return result, out


def profile_step(fn, device: torch.device) -> str:
    """The kernels of one call by device time (run after the timed calls, so nothing compiles here)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU]) as prof:
        fn()
        sync(device)
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total",
                                      row_limit=30, max_name_column_width=90)
    print(table, flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="5b", choices=sorted(CONFIGS))
    parser.add_argument("--tiny", action="store_true", help="tiny config of the same kind and small latents (CPU check)")
    parser.add_argument("--frames", type=int, default=49, help="video frames (4k+1)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--text-tokens", type=int, default=226)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--attention", default="auto", choices=list(ATTENTION_CHOICES),
                        help="ours' kernel; with flash-cute diffusers keeps PyTorch's default SDPA choice")
    parser.add_argument("--diffusers-attention", default="same", choices=["same", "default"],
                        help="same: diffusers runs under the same SDPA kernel choice as ours; default: PyTorch's")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (fullgraph for ours)")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--fp8", action="store_true",
                        help="ours with e4m3 linear layers in its blocks (models/fp8.py); diffusers stays bf16, so the "
                             "relative error is fp8's cost")
    parser.add_argument("--skipped-step", action="store_true",
                        help="also time a step that the first-block cache skips (blocks 1.. replaced by the cached "
                             "residual): the cost of a cache hit")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one step of ours and print the kernels that took the most time")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config, (latent_f, latent_h, latent_w), text_tokens = benchmark_shape(args)
    video_tokens = latent_f * (latent_h // config.patch_size) * (latent_w // config.patch_size)
    batch = 2
    flops = step_flops(config, video_tokens, text_tokens, batch)
    set_attention_backend(args.attention)

    torch.manual_seed(0)
    with torch.device(device):
        ours = CogVideoXTransformer(config).to(dtype).eval()
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(batch, latent_f, config.in_channels, latent_h, latent_w, generator=g, device=device, dtype=dtype)
    context = torch.randn(batch, text_tokens, config.text_embed_dim, generator=g, device=device, dtype=dtype)
    t = torch.tensor([500, 500], device=device)

    result: dict = {
        "config": "tiny-" + args.config if args.tiny else args.config,
        "latents": [latent_f, latent_h, latent_w], "text_tokens": text_tokens, "tokens": video_tokens + text_tokens,
        "batch": batch, "dtype": str(dtype).removeprefix("torch."), "attention": args.attention,
        "compile": args.compile, "fp8": args.fp8, "steps": args.steps, "warmup": args.warmup, "flops_per_step": flops,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
    }
    print(json.dumps({k: result[k] for k in ("config", "latents", "tokens", "dtype", "attention", "compile", "device")}))

    with torch.no_grad():
        # diffusers gets the bf16 weights, also with --fp8
        state = None if args.no_diffusers else {k: v.cpu() for k, v in ours.state_dict().items()}
        if args.fp8:
            from vidfusion.models.fp8 import convert_to_fp8

            exact = ours(x, context, t).float()  # eager bf16: the reference for fp8's own error
            result["fp8_layers"] = len(convert_to_fp8(ours))
        run_ours = torch.compile(ours, fullgraph=True) if args.compile else ours
        result["ours"], out_ours = measure("ours", lambda: run_ours(x, context, t), args, flops, device)
        result["ours_finite"] = bool(out_ours.isfinite().all())
        if args.profile:
            result["profile"] = profile_step(lambda: run_ours(x, context, t), device)
        if args.fp8:
            result["fp8_rel_err_vs_bf16"] = float((out_ours - exact).abs().max() / exact.abs().max())
            result["fp8_rel_fro_err_vs_bf16"] = float((out_ours - exact).norm() / exact.norm())
            print(f"fp8 vs bf16: max relative error {result['fp8_rel_err_vs_bf16']:.2e}, "
                  f"Frobenius {result['fp8_rel_fro_err_vs_bf16']:.2e}, finite {result['ours_finite']}")
            del exact
        if args.skipped_step:
            from vidfusion.models.step_cache import FirstBlockCache

            # The cache branches on the host, so compile the blocks, not the forward. The same input every call
            # leaves block 0's residual unchanged: after the first (full) call every call is a hit.
            if args.compile:
                for block in ours.transformer_blocks:
                    block.compile(fullgraph=True)
            ours.step_cache = FirstBlockCache(threshold=float("inf"))
            # A hit runs about one block of the step's work (block 0; embeddings and the output layer are small).
            result["ours_skipped_step"], _ = measure("skipped", lambda: ours(x, context, t), args,
                                                     flops / config.num_layers, device)
            result["ours_skipped_step"]["hits"] = ours.step_cache.hits
            result["ours_skipped_step"]["calls"] = ours.step_cache.calls
            ours.step_cache = None

        if not args.no_diffusers:
            import diffusers
            from diffusers import CogVideoXTransformer3DModel

            del ours, run_ours
            with torch.device(device):
                ref = CogVideoXTransformer3DModel.from_config(config.to_dict()).to(dtype).eval()
            ref.load_state_dict(state)
            del state
            rope = rope_3d(config, latent_f, latent_h, latent_w, device) if config.use_rotary_positional_embeddings else None
            run_ref = torch.compile(ref) if args.compile else ref
            kernels = ATTENTION_BACKENDS.get(args.attention)  # None for flash-cute, which diffusers cannot use
            same = (args.diffusers_attention == "same" and kernels is not None
                    and (args.attention != "auto" or device.type == "cuda"))

            def ref_step():
                with sdpa_kernel(kernels, set_priority=True) if same else contextlib.nullcontext():
                    return run_ref(hidden_states=x, encoder_hidden_states=context, timestep=t,
                                   image_rotary_emb=rope, return_dict=False)[0]

            result["diffusers"], out_ref = measure("diffusers", ref_step, args, flops, device)
            result["diffusers_version"] = diffusers.__version__
            result["diffusers_attention"] = args.diffusers_attention
            result["speedup"] = round(result["diffusers"]["s_per_step"] / result["ours"]["s_per_step"], 3)
            result["max_rel_err"] = float((out_ours - out_ref).abs().max() / out_ref.abs().max())
            print(f"speedup {result['speedup']}x, max relative error {result['max_rel_err']:.2e}")

    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
