"""Transformer forward time: ours against diffusers' CogVideoXTransformer3DModel, same random weights and inputs.

One CFG step of CogVideoX is one forward at batch 2 (negative and positive prompt). Run on the GPU machine:

    python benchmarks/bench_transformer.py --preset cogvideox-5b --frames 49 --height 480 --width 720

Prints seconds per forward for each implementation (median of --iters after --warmup), their ratio (measured in the
same process, so machine noise mostly cancels), achieved TFLOP/s from an analytic FLOP count, peak memory, and the
max relative error of ours against diffusers.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from vidfusion.models.transformer import TRANSFORMER_PRESETS, CogVideoXTransformer, rope_3d


def flops_per_forward(config, tokens_video: int, batch: int) -> float:
    """Matmul FLOPs: 4 DxD projections + two D x 4D MLP matmuls per token, and QK^T + AV over the joint sequence."""
    d = config.num_attention_heads * config.attention_head_dim
    n = tokens_video + config.max_text_seq_length
    per_layer = 2 * n * d * d * 4 + 2 * n * d * 4 * d * 2 + 2 * 2 * n * n * d
    return batch * config.num_layers * per_layer


def cuda_times_ms(fn, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of `iters` calls after `warmup`, from CUDA events (no host-side sync noise inside)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def time_forward(fn, warmup: int, iters: int) -> float:
    return statistics.median(cuda_times_ms(fn, warmup, iters)) / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="cogvideox-5b", choices=sorted(TRANSFORMER_PRESETS))
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-diffusers", action="store_true")
    args = parser.parse_args()

    device, dtype = torch.device("cuda"), torch.bfloat16
    config = TRANSFORMER_PRESETS[args.preset]
    torch.manual_seed(0)
    with torch.device(device):
        ours = CogVideoXTransformer(config).to(dtype).eval()
    latent_frames = (args.frames - 1) // 4 + 1
    if config.patch_size_t:
        latent_frames += -latent_frames % config.patch_size_t
    h, w = args.height // 8, args.width // 8
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(args.batch, latent_frames, config.in_channels, h, w, device=device, dtype=dtype, generator=g)
    context = torch.randn(args.batch, config.max_text_seq_length, config.text_embed_dim, device=device, dtype=dtype,
                          generator=g)
    t = torch.full((args.batch,), 500, device=device, dtype=torch.long)
    tokens = latent_frames // (config.patch_size_t or 1) * (h // config.patch_size) * (w // config.patch_size)
    flops = flops_per_forward(config, tokens, args.batch)
    result = {"preset": args.preset, "shape": [args.frames, args.height, args.width], "batch": args.batch,
              "tokens": tokens + config.max_text_seq_length, "device": torch.cuda.get_device_name()}

    with torch.no_grad():
        torch.cuda.reset_peak_memory_stats()
        ours_s = time_forward(lambda: ours(x, context, t), args.warmup, args.iters)
        result["ours_s"] = round(ours_s, 4)
        result["ours_tflops"] = round(flops / ours_s / 1e12, 1)
        result["ours_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out_ours = ours(x, context, t).float()

        if not args.no_diffusers:
            from diffusers import CogVideoXTransformer3DModel

            with torch.device(device):
                ref = CogVideoXTransformer3DModel.from_config(config.to_dict()).to(dtype).eval()
            ref.load_state_dict(ours.state_dict())
            rope = rope_3d(config, latent_frames, h, w, device) if config.use_rotary_positional_embeddings else None

            def ref_forward():
                return ref(hidden_states=x, encoder_hidden_states=context, timestep=t, image_rotary_emb=rope,
                           return_dict=False)[0]

            torch.cuda.reset_peak_memory_stats()
            ref_s = time_forward(ref_forward, args.warmup, args.iters)
            result["diffusers_s"] = round(ref_s, 4)
            result["diffusers_tflops"] = round(flops / ref_s / 1e12, 1)
            result["diffusers_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            result["speedup_vs_diffusers"] = round(ref_s / ours_s, 3)
            out_ref = ref_forward().float()
            result["max_rel_err"] = float((out_ours - out_ref).abs().max() / out_ref.abs().max())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
