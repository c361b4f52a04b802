"""Optional attention kernel: FlashAttention's CuTe-DSL forward (`flash_attn.cute`), the Hopper kernel with no build.

Why it is here: PyTorch's SDPA has no FlashAttention-3-class kernel for head_dim 64 on Hopper (cuDNN's is the fastest
it has, ~430 TFLOP/s on an H100), FlashAttention-3 itself has no wheel and needs a long CUDA build, and the CuTe-DSL
rewrite (FlashAttention-4, which has an sm90 forward) is pure Python on top of NVIDIA's `nvidia-cutlass-dsl` JIT, so
it can be installed wherever pip works. It is used only when asked for (`--attention flash-cute`); nothing else in
VidFusion imports it.

Install (either):
- the `flash_attn/cute` folder of flash-attn 2.8.3's source (its interface needs `nvidia-cutlass-dsl==4.1.0` and
  `cuda-python` 12.x) on PYTHONPATH next to an empty `flash_attn/__init__.py`; or
- `pip install flash-attn-4` (newer; needs nvidia-cutlass-dsl >= 4.4; its wheel was too large to carry to the GPU
  machine, so this route is untested here).

The kernel works in [B, S, heads, head_dim]; our blocks hold q/k/v as [B, heads, S, head_dim] views. `attention`
passes transposed views (the kernel takes any strides with a unit last one) and returns its output as a transposed
view, so the caller's `b n s d -> b s (n d)` is a free reshape instead of SDPA's copy. The call is a torch custom op
so that `torch.compile(fullgraph=True)` keeps one graph around it.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from vidfusion.errors import VidFusionError

INSTALL_HINT = ("put flash-attn 2.8.3's flash_attn/cute source folder on PYTHONPATH with nvidia-cutlass-dsl==4.1.0 and "
                "cuda-python 12.x (the tested route), or `pip install flash-attn-4` (newer, untested here); see "
                "vidfusion/models/flash_cute.py")

_kernel: Callable | None = None
_stand_in = False


def load_kernel() -> Callable:
    """flash_attn.cute's `flash_attn_func`, imported once; a VidFusionError that names the fix when it is missing."""
    global _kernel
    if _kernel is None:
        try:
            module = importlib.import_module("flash_attn.cute")
        except ImportError as err:
            raise VidFusionError(f"--attention flash-cute needs FlashAttention's CuTe-DSL kernels ({err}); "
                                 f"{INSTALL_HINT}") from err
        _kernel = module.flash_attn_func
    return _kernel


def set_kernel(fn: Callable | None) -> None:
    """Replace the kernel (the CPU tests use an independent einsum stand-in with the same [B, S, heads, head_dim]
    contract); None goes back to importing flash_attn.cute."""
    global _kernel, _stand_in
    _kernel, _stand_in = fn, fn is not None


@torch.library.custom_op("vidfusion::flash_cute_attention", mutates_args=())
def flash_cute_attention_bshd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked attention over [B, S, heads, head_dim] tensors, softmax scale 1/sqrt(head_dim)."""
    out = load_kernel()(q, k, v)
    out = out[0] if isinstance(out, tuple) else out  # flash_attn_func returns (out, lse)
    return out.contiguous()  # the fake below promises a contiguous result; the kernel's already is (no copy)


@flash_cute_attention_bshd.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, heads, S, head_dim] in and out, like SDPA; the output is a view of a [B, S, heads, head_dim] tensor."""
    if not _stand_in and (not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16)):
        raise VidFusionError(f"--attention flash-cute runs on CUDA in bf16 or fp16, not {q.device.type} "
                             f"{str(q.dtype).removeprefix('torch.')}; use --attention auto here")
    out = flash_cute_attention_bshd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
