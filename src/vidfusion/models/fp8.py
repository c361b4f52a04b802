"""Opt-in fp8 (e4m3) linear layers for GPU inference of the transformer.

`convert_to_fp8(model)` swaps the big token-wise nn.Linear layers of the transformer blocks (attention q/k/v/out and
the two MLP linears) for `Fp8Linear`, which multiplies in float8_e4m3fn with `torch._scaled_mm` and returns the
input's dtype. On an H100, for CogVideoX-5B shapes (35552 tokens, K/N in 3072/9216/12288) the fp8 GEMM runs
1.45-1.77x faster than the bf16 one, while quantising the activations costs 0.2-0.9 ms per GEMM under torch.compile
(1-3.7 ms eager, so compile the model to see the gain). The product's relative (Frobenius) error on random data is
~0.04, so this is an approximation, off by default: nothing in vidfusion converts a model unless asked.

Scaling is rowwise on both operands: one fp32 scale per activation row (token), computed on the fly as
amax(|row|) / 448, and one per weight output channel, computed once at conversion. A single per-tensor scale would
let one outlier token or channel push every other value into e4m3's subnormals; per-row scales cost nothing extra
in the GEMM (cuBLAS/CUTLASS apply them in the epilogue) and keep each row's own 3-bit-mantissa precision.

Inference only: no gradients flow into the fp8 weights. Convert after loading the checkpoint and moving the model to
its device and dtype, since Module.to(dtype) would also cast the fp8 buffers (float8 counts as floating point).
On CUDA `_scaled_mm` needs in/out features that are multiples of 16; the converter leaves other layers as they are.
Rowwise scales need a GPU with fp8 tensor cores (sm_89+) and, on CPU, torch >= 2.13 (2.11's CPU kernel takes
per-tensor scales only); CPU runs are for tests, not speed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vidfusion.errors import VidFusionError

E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
# Floor for a row's scale, so an all-zero row quantises to zeros instead of 0/0.
_MIN_SCALE = 1e-12


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (x_fp8 [M, K] float8_e4m3fn, scale [M, 1] fp32) with x ~= x_fp8 * scale, M = prod(leading dims).

    Each row's largest magnitude maps to 448, e4m3's largest finite value.
    """
    x = x.reshape(-1, x.shape[-1])
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / E4M3_MAX).clamp(min=_MIN_SCALE)
    return (x / scale).to(torch.float8_e4m3fn), scale


def fp8_linear(
    x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [..., K] @ (weight_fp8 * weight_scale.T).T + bias -> [..., N] in x's dtype; weight_fp8 [N, K], scale [1, N].

    x is quantised per row on every call; `_scaled_mm` applies both scales in fp32 before rounding to x's dtype.
    """
    x_fp8, x_scale = quantize_rowwise(x)
    # CUDA's rowwise kernel takes a bias (added in its fp32 epilogue) only for 16-bit output; fp32 adds it afterwards.
    fuse_bias = bias is not None and x.dtype == torch.bfloat16
    out = torch._scaled_mm(
        x_fp8,
        weight_fp8.t(),  # column-major mat2, as the fp8 kernels require
        scale_a=x_scale,
        scale_b=weight_scale,
        bias=bias.to(x.dtype) if fuse_bias else None,
        out_dtype=x.dtype,
    )
    if bias is not None and not fuse_bias:
        out = out + bias.to(x.dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def fits_fp8(linear: nn.Linear) -> bool:
    """Whether `_scaled_mm` can run this layer on CUDA (in and out features multiples of 16)."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


class Fp8Linear(nn.Module):
    """An inference-only stand-in for nn.Linear with an e4m3 weight and per-output-channel fp32 scales."""

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        self.register_buffer("weight_fp8", weight_fp8)  # [N, K] float8_e4m3fn
        self.register_buffer("weight_scale", weight_scale)  # [1, N] fp32
        self.register_buffer("bias", bias)  # [N] in the original dtype, or None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        if not fits_fp8(linear):
            raise VidFusionError(
                f"Linear({linear.in_features}, {linear.out_features}) cannot run in fp8: in and out features must be "
                "multiples of 16; keep this layer in bf16 (convert_to_fp8 skips it)"
            )
        weight_fp8, scale = quantize_rowwise(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight_fp8, scale.reshape(1, -1), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight_fp8, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# The token-wise GEMMs of a transformer block. Left out on purpose: the adaLN linears (norm1/norm2.linear, norm_out)
# and the time embedding, whose M is the batch size, so fp8 saves nothing (and they set every block's modulation);
# patch_embed and proj_out, which map from and to the latent itself, so their error lands directly in the prediction.
_BLOCK_LINEARS = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0", ".ff.net.0.proj", ".ff.net.2")


def block_linears(name: str, linear: nn.Linear) -> bool:
    """The default `include` of `convert_to_fp8`: attention q/k/v/out and the MLP linears of transformer_blocks."""
    return name.startswith("transformer_blocks.") and name.endswith(_BLOCK_LINEARS)


@torch.no_grad()
def convert_to_fp8(model: nn.Module, include: Callable[[str, nn.Linear], bool] | None = None) -> list[str]:
    """Replace, in place, the nn.Linear submodules chosen by include(name, linear) with Fp8Linear; return their names.

    Layers whose in/out features are not multiples of 16 are skipped silently (they stay nn.Linear). A custom
    `include` must treat each attention's to_q/to_k/to_v alike: `qkv_projection` fuses them into one GEMM.
    """
    include = include or block_linears
    chosen = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and include(name, m) and fits_fp8(m)
    ]
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Fp8Linear.from_linear(linear))
    return [name for name, _ in chosen]
