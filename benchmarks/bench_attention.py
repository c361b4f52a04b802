"""Attention kernels alone at one CogVideoX layer's shape: SDPA's backends against FlashAttention's CuTe-DSL kernel.

The 5B step is about 42 x (attention + four matmuls); attention is the larger part, so this is where a faster exact
kernel pays. Default shape: one 5B layer under CFG, batch 2, 48 heads x 64, 17,550 video + 226 text tokens, bf16.

    python benchmarks/bench_attention.py --json attention.json
    python benchmarks/bench_attention.py --heads 30 --kernels cudnn,flash-cute        # the 2B layer
    python benchmarks/bench_attention.py --cute-blocks 128x128,128x192,192x128       # FA-cute tile shapes
    python benchmarks/bench_attention.py --layout packed-v --kernels flash-cute      # v a view of a fused qkv output

--layout sets how q, k, v lie in memory (the kernels see [B, H, S, D] views of them either way): bhsd (each
contiguous as [B, H, S, D], SDPA's own layout), bshd (each contiguous as [B, S, H, D], FlashAttention's), packed-v
(q and k bhsd, v a view of one [B, S, 3, H, D] projection output, as our blocks produce them), packed (all three
views of that output).

Reported per kernel: median ms over --runs calls after --warmup, TFLOP/s (4 * B * H * S^2 * D: QK^T and PV), and the
max relative error max|out - ref| / max|ref| against the memory-efficient SDPA kernel run in fp32 on the same
(bf16-rounded) inputs. Kernels that cannot run here are listed with the reason rather than failing the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vidfusion.io.checkpoint import write_json

sys.path.insert(0, os.path.dirname(__file__))
from bench_transformer import cuda_times_ms  # noqa: E402

SDPA = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION}


def kernel_fn(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """A call with [B, H, S, D] in and out for `name` (an SDPA backend, flash-cute, or flash-cute:MxN tiles)."""
    if name in SDPA:
        def run():
            with sdpa_kernel([SDPA[name]]):
                return F.scaled_dot_product_attention(q, k, v)
        return run
    if name == "flash-cute":
        from vidfusion.models import flash_cute

        flash_cute.load_kernel()
        return lambda: flash_cute.attention(q, k, v)
    if name.startswith("flash-cute:"):
        # Tile shapes beyond the kernel's defaults go through its internal entry point (benchmark only).
        from flash_attn.cute.interface import _flash_attn_fwd

        m, n = (int(x) for x in name.split(":")[1].split("x"))
        qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
        return lambda: _flash_attn_fwd(qs, ks, vs, m_block_size=m, n_block_size=n)[0].transpose(1, 2)
    raise SystemExit(f"unknown kernel {name!r}")


def make_inputs(shape: tuple[int, int, int, int], layout: str) -> tuple[torch.Tensor, ...]:
    """q, k, v as [B, H, S, D] views of standard-normal bf16 memory laid out as `layout` says (see the docstring)."""
    b, h, s, d = shape
    g = torch.Generator("cuda").manual_seed(0)
    randn = lambda *size: torch.randn(size, generator=g, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    if layout == "bhsd":
        return tuple(randn(b, h, s, d) for _ in range(3))
    if layout == "bshd":
        return tuple(randn(b, s, h, d).transpose(1, 2) for _ in range(3))
    packed = randn(b, s, 3, h, d).permute(2, 0, 3, 1, 4)  # [3, B, H, S, D] views
    if layout == "packed":
        return tuple(packed)
    return packed[0].contiguous(), packed[1].contiguous(), packed[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=48)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=17550 + 226)
    parser.add_argument("--kernels", default="cudnn,flash,efficient,flash-cute")
    parser.add_argument("--cute-blocks", default="", help="extra flash-cute tile shapes, e.g. 128x128,128x192")
    parser.add_argument("--layout", default="bhsd", choices=["bhsd", "bshd", "packed-v", "packed"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention times CUDA kernels; run it on a GPU machine")

    shape = (args.batch, args.heads, args.tokens, args.head_dim)
    q, k, v = make_inputs(shape, args.layout)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    flops = 4 * args.batch * args.heads * args.tokens**2 * args.head_dim
    names = [n for n in args.kernels.split(",") if n]
    names += [f"flash-cute:{b}" for b in args.cute_blocks.split(",") if b]
    result = {"shape_bhsd": list(shape), "layout": args.layout, "dtype": "bfloat16", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "kernels": {}}
    for name in names:
        try:
            fn = kernel_fn(name, q, k, v)
            out = fn()
            times = cuda_times_ms(fn, args.warmup, args.runs)
        except Exception as err:  # a kernel missing or unsupported here is a result, not a crash
            result["kernels"][name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            print(f"{name:>22}: not run ({type(err).__name__}: {str(err)[:200]})", flush=True)
            continue
        ms = statistics.median(times)
        err = float((out.float() - ref).abs().max() / ref.abs().max())
        result["kernels"][name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), "max_rel_err": err,
                                   "all_ms": [round(t, 3) for t in times]}
        print(f"{name:>22}: {ms:8.3f} ms  {flops / ms / 1e9:6.1f} TFLOP/s  max rel err {err:.2e}", flush=True)
        del out
    print(json.dumps({n: r.get("ms") for n, r in result["kernels"].items()}))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
