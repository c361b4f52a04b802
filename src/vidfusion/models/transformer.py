"""CogVideoX expert-adaLN diffusion transformer (2B, 5B, 5B-I2V, 1.5-5B, 1.5-5B-I2V).

Text and video tokens share one sequence and one set of attention/MLP weights; each stream gets its own adaLN
shift/scale/gate ("expert adaLN") computed from the timestep embedding. The output is a v-prediction.

Parameter and buffer names equal those of diffusers' `CogVideoXTransformer3DModel`, so its checkpoints load with
`strict=True`, and `TransformerConfig` uses the keys of its config.json.

Decisions worth knowing:
- Positions are computed here from the latent grid rather than passed in: 3D RoPE (5B, 1.5) exactly as the diffusers
  pipelines build `image_rotary_emb`, and the 2B sin-cos table in float64 as diffusers builds it, both cached per shape.
  RoPE for 1.5 simply extends past the base grid instead of failing like diffusers' "slice" grid.
- 5B-I2V's learned table (`patch_embed.pos_embedding`) is a persistent buffer, as in diffusers (it is not trained, and
  it does not count as a parameter). For fewer latent frames than it was built for we take its leading rows, as the
  original SAT code does; diffusers instead swaps in a sin-cos table there. Other spatial sizes are refused.
- The text stream carries no mask: padded T5 tokens are attended to, as in training.
- Inference speed: the hot ops are small fused functions (one q/k/v matmul on weights concatenated per call, LayerNorm
  with adaLN modulation, q/k-norm with RoPE over the joint sequence, the GELU MLP) that torch.compile(fullgraph=True)
  traces without graph breaks; `set_attention_backend` picks the SDPA kernel. Multi-GPU inference (vidfusion.parallel)
  hooks in through `sequence_parallel`, which shards tokens and replaces attention; the rest of forward is unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from vidfusion.errors import VidFusionError
from vidfusion.io.config import config_from_dict
from vidfusion.models import flash_cute
from vidfusion.models.fp8 import Fp8Linear, fp8_linear
from vidfusion.models.step_cache import FirstBlockCache

# ----------------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class TransformerConfig:
    """Field names and defaults equal diffusers' `CogVideoXTransformer3DModel` config.json keys."""

    num_attention_heads: int = 30
    attention_head_dim: int = 64
    in_channels: int = 16
    out_channels: int | None = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    ofs_embed_dim: int | None = None
    text_embed_dim: int = 4096
    num_layers: int = 30
    dropout: float = 0.0
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    patch_size_t: int | None = None
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = False
    use_learned_positional_embeddings: bool = False
    patch_bias: bool = True

    def __post_init__(self) -> None:
        if self.out_channels is None:
            self.out_channels = self.in_channels
        if self.activation_fn != "gelu-approximate" or self.timestep_activation_fn != "silu":
            raise VidFusionError(
                f"activation_fn={self.activation_fn!r}, timestep_activation_fn={self.timestep_activation_fn!r} are not "
                "supported; use 'gelu-approximate' and 'silu' (all CogVideoX checkpoints do)"
            )
        if self.use_learned_positional_embeddings and not self.use_rotary_positional_embeddings:
            raise VidFusionError(
                "use_learned_positional_embeddings needs use_rotary_positional_embeddings=True (as in CogVideoX-5B-I2V)"
            )
        if self.use_rotary_positional_embeddings and self.attention_head_dim % 16:
            raise VidFusionError(
                f"attention_head_dim={self.attention_head_dim} cannot be split t:h:w = 1/4:3/8:3/8 into even parts "
                "for 3D RoPE; use a multiple of 16"
            )
        if not self.use_rotary_positional_embeddings and self.inner_dim % 16:
            raise VidFusionError(
                f"hidden size {self.inner_dim} cannot hold the 3D sin-cos table; use heads * head_dim divisible by 16"
            )
        if self.ofs_embed_dim and self.ofs_embed_dim != self.time_embed_dim:
            raise VidFusionError(
                f"ofs_embed_dim={self.ofs_embed_dim} must equal time_embed_dim={self.time_embed_dim} (the two "
                "embeddings are summed); set them equal"
            )

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        """Read a diffusers `transformer/config.json` dict (see `config_from_dict` for unknown keys)."""
        return config_from_dict(cls, d, ("CogVideoXTransformer3DModel",), "transformer")

    def to_dict(self) -> dict[str, Any]:
        """A diffusers-compatible config.json dict."""
        return {"_class_name": "CogVideoXTransformer3DModel", **dataclasses.asdict(self)}


# Published config.json values (THUDM/CogVideoX-2b, -5b, -5b-I2V, CogVideoX1.5-5B, -5B-I2V).
_V10 = dict(sample_height=60, sample_width=90, sample_frames=49)
_V15 = dict(sample_height=300, sample_width=300, sample_frames=81, patch_size_t=2, patch_bias=False)
_5B = dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    "cogvideox-2b": TransformerConfig(num_attention_heads=30, num_layers=30, **_V10),
    "cogvideox-5b": TransformerConfig(**_5B, **_V10),
    "cogvideox-5b-i2v": TransformerConfig(**_5B, **_V10, in_channels=32, use_learned_positional_embeddings=True),
    "cogvideox1.5-5b": TransformerConfig(**_5B, **_V15),
    "cogvideox1.5-5b-i2v": TransformerConfig(**_5B, **_V15, in_channels=32, ofs_embed_dim=512),
}


def tiny_config(like: str, **overrides: Any) -> TransformerConfig:
    """A tiny config (2 heads x 16, 2 layers, small grid) with the same features as the preset `like`, for tests."""
    if like not in TRANSFORMER_PRESETS:
        raise VidFusionError(f"unknown preset {like!r}; use one of {sorted(TRANSFORMER_PRESETS)}")
    base = TRANSFORMER_PRESETS[like]
    # Head dim 16 splits into RoPE t:h:w = 4:6:6; hidden 32 is divisible by 16 for the sin-cos table.
    tiny: dict[str, Any] = dict(
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        in_channels=8 if base.in_channels == 2 * base.out_channels else 4,
        out_channels=4,
        time_embed_dim=24,
        ofs_embed_dim=24 if base.ofs_embed_dim else None,
        text_embed_dim=20,
        max_text_seq_length=7,
        # 1.0 keeps the 2:3 aspect of 60x90 (grid 4x6) and 3 latent frames; 1.5 a square 6x6 grid and 4 latent frames.
        sample_height=8 if base.patch_size_t is None else 12,
        sample_width=12,
        sample_frames=9 if base.patch_size_t is None else 13,
    )
    return dataclasses.replace(base, **{**tiny, **overrides})


# ----------------------------------------------------------------------------------------------------------------------
# Position and time embeddings (plain functions; their op order matches diffusers so fp32 results agree bit for bit)


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] in fp32 of (possibly fractional) timesteps [B]."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t[:, None].float() * torch.exp(exponent)[None]
    sin, cos = torch.sin(args), torch.cos(args)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin | cos] table [len(pos), dim] in float64 (positions stay as given; frequencies in float64)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    angles = torch.outer(pos.to(torch.float64), 1.0 / 10000**omega)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_3d(config: TransformerConfig, frames: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """CogVideoX-2B absolute positions [frames * grid_h * grid_w, D] in float64, token order (t, h, w).

    Channels are [t over D/4 | w over 3D/8 | h over 3D/8]; spatial positions are divided by the interpolation scale
    (1.875 = 30/16: the 30x45 grid of 480x720 video spans the positions of a 16x24 grid).
    """
    d = config.inner_dim
    t = torch.arange(frames, dtype=torch.float32, device=device) / config.temporal_interpolation_scale
    h = torch.arange(grid_h, dtype=torch.float32, device=device) / config.spatial_interpolation_scale
    w = torch.arange(grid_w, dtype=torch.float32, device=device) / config.spatial_interpolation_scale
    hh, ww = torch.meshgrid(h, w, indexing="ij")
    spatial = torch.cat([_sincos_1d(3 * d // 8, ww.flatten()), _sincos_1d(3 * d // 8, hh.flatten())], dim=1)
    temporal = _sincos_1d(d // 4, t)
    table = torch.cat(
        [temporal[:, None].expand(-1, grid_h * grid_w, -1), spatial[None].expand(frames, -1, -1)], dim=-1
    )
    return table.flatten(0, 1)


def _crop_region(grid_h: int, grid_w: int, base_h: int, base_w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(top, left), (bottom, right) of a grid_h x grid_w grid resized to fit, and centred in, the base grid."""
    if grid_h / grid_w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / grid_h * grid_w))
    else:
        rh, rw = int(round(base_w / grid_w * grid_h)), base_w
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def _rope_1d(dim: int, pos: torch.Tensor, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim))
    angles = torch.outer(pos, freqs)
    # Each frequency covers a channel pair (x0, x1), hence repeat_interleave rather than concat.
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def rope_3d(
    config: TransformerConfig, num_latent_frames: int, height: int, width: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE (cos, sin), each [tokens, head_dim] fp32, for a latent of num_latent_frames x height x width.

    Matches the diffusers CogVideoX pipelines' `image_rotary_emb`. Head channels split t:h:w = 1/4:3/8:3/8.
    1.0: frames 0..F-1; rows/columns span the crop region of this grid inside the base grid (sample size / patch),
    so other resolutions and aspect ratios reuse the trained position range. 1.5: plain integer positions.
    """
    p, pt = config.patch_size, config.patch_size_t
    gh, gw = height // p, width // p
    hd = config.attention_head_dim
    dim_t, dim_hw = hd // 4, hd // 8 * 3
    if pt is None:
        frames = num_latent_frames
        (top, left), (bottom, right) = _crop_region(gh, gw, config.sample_height // p, config.sample_width // p)
        kw = dict(dtype=torch.float32, device=device)
        # The reference spacing, kept as is (it is what the checkpoints saw): linspace(start, stop * (n - 1) / n, n).
        # At the base size this gives the integers 0..n-1.
        pos_t = torch.linspace(0, frames * (frames - 1) / frames, frames, **kw)
        pos_h = torch.linspace(top, bottom * (gh - 1) / gh, gh, **kw)
        pos_w = torch.linspace(left, right * (gw - 1) / gw, gw, **kw)
    else:
        frames = (num_latent_frames + pt - 1) // pt
        pos_t, pos_h, pos_w = (torch.arange(n, dtype=torch.float32, device=device) for n in (frames, gh, gw))
    (t_cos, t_sin), (h_cos, h_sin), (w_cos, w_sin) = (
        _rope_1d(dim_t, pos_t), _rope_1d(dim_hw, pos_h), _rope_1d(dim_hw, pos_w)
    )

    def grid(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        t = t[:, None, None].expand(-1, gh, gw, -1)
        h = h[None, :, None].expand(frames, -1, gw, -1)
        w = w[None, None, :].expand(frames, gh, -1, -1)
        return torch.cat([t, h, w], dim=-1).reshape(frames * gh * gw, -1)

    return grid(t_cos, h_cos, w_cos), grid(t_sin, h_sin, w_sin)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x0, x1) of x [B, H, S, hd] by the angles in cos/sin [S, hd]; computed in fp32."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-x1, x0], dim=-1).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def with_text_identity(rope: tuple[torch.Tensor, torch.Tensor], n_text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend n_text identity rotations (cos 1, sin 0) so RoPE runs over the joint [text; video] sequence at once.

    Exact: x * 1 + r * 0 == x in floating point, so text tokens come out unchanged, without slicing and re-joining.
    """
    cos, sin = rope
    return F.pad(cos, (0, 0, n_text, 0), value=1.0), F.pad(sin, (0, 0, n_text, 0), value=0.0)


# ----------------------------------------------------------------------------------------------------------------------
# Fused ops. Each is one function so that torch.compile can emit one kernel for it (and eager saves what it can:
# one GEMM for q/k/v, addcmul for modulation). tests/test_fused_ops.py checks each against its unfused form.


def layer_norm_modulate(x: torch.Tensor, norm: nn.LayerNorm, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: norm(x) * (1 + scale) + shift."""
    normed = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return torch.addcmul(shift, normed, 1 + scale)


def qkv_projection(
    h: torch.Tensor, to_q: nn.Linear | Fp8Linear, to_k: nn.Linear | Fp8Linear, to_v: nn.Linear | Fp8Linear, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, heads, S, hd] from h [B, S, D] with one matmul.

    The weights are concatenated on every call rather than stored fused, so the checkpoint keys to_q/to_k/to_v stay
    as they are and there is no cache to invalidate. By a bandwidth estimate the copy is ~0.1% of a 480p 5B forward on
    an H100 (inductor's freezing mode can constant-fold it). Layers converted by vidfusion.models.fp8 fuse the same
    way: their per-output-channel scales concatenate like the weights, so one fp8 GEMM equals the three.
    """
    bias = torch.cat([to_q.bias, to_k.bias, to_v.bias]) if to_q.bias is not None else None
    if isinstance(to_q, Fp8Linear):
        weight = torch.cat([to_q.weight_fp8, to_k.weight_fp8, to_v.weight_fp8])
        scale = torch.cat([to_q.weight_scale, to_k.weight_scale, to_v.weight_scale], dim=1)
        out = fp8_linear(h, weight, scale, bias)
    else:
        weight = torch.cat([to_q.weight, to_k.weight, to_v.weight])
        out = F.linear(h, weight, bias)
    qkv = rearrange(out, "b s (three n d) -> three b n s d", three=3, n=heads)
    return qkv[0], qkv[1], qkv[2]


def qk_norm_rope(
    q: torch.Tensor, k: torch.Tensor, norm_q: nn.LayerNorm, norm_k: nn.LayerNorm,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head LayerNorm of q and k, then RoPE over the whole sequence (rope covers text tokens as identity)."""
    q = F.layer_norm(q, norm_q.normalized_shape, norm_q.weight, norm_q.bias, norm_q.eps)
    k = F.layer_norm(k, norm_k.normalized_shape, norm_k.weight, norm_k.bias, norm_k.eps)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return q, k


def gelu_tanh_mlp(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, p_drop: float = 0.0) -> torch.Tensor:
    """fc2(dropout(gelu_tanh(fc1(x)))); the bias add and GELU fuse into fc1's epilogue under torch.compile."""
    return fc2(F.dropout(F.gelu(fc1(x), approximate="tanh"), p_drop, training=p_drop > 0))


# ----------------------------------------------------------------------------------------------------------------------
# Attention kernel choice


ATTENTION_BACKENDS: dict[str, list[SDPBackend]] = {
    # cuDNN first: on Hopper it is the fastest SDPA kernel for CogVideoX's head_dim 64 in bf16.
    "auto": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}
# Beyond SDPA: FlashAttention's CuTe-DSL kernel, when installed (models/flash_cute.py).
ATTENTION_CHOICES = (*ATTENTION_BACKENDS, "flash-cute")
_attention_backend = "auto"


def set_attention_backend(name: str) -> None:
    """Pick the SDPA kernel for every CogVideoXTransformer in this process ("auto" is the default).

    "auto": cuDNN, then flash, then memory-efficient, then math on CUDA; elsewhere PyTorch's own choice (on CPU its
    fused flash kernel, faster and lighter than math, with math as fallback). A named backend is used alone,
    so SDPA raises if that kernel cannot run the inputs (e.g. "flash" on fp32 CUDA tensors). "flash-cute" is
    FlashAttention's CuTe-DSL kernel (CUDA, bf16/fp16), imported here so that a missing install fails at once.
    """
    global _attention_backend
    if name not in ATTENTION_CHOICES:
        raise VidFusionError(f"unknown attention backend {name!r}; use one of {', '.join(ATTENTION_CHOICES)}")
    if name == "flash-cute":
        flash_cute.load_kernel()
    _attention_backend = name


def get_attention_backend() -> str:
    return _attention_backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) attention over [B, heads, S, head_dim] with the kernel chosen by `set_attention_backend`."""
    if _attention_backend == "auto" and q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v)
    if _attention_backend == "flash-cute":
        return flash_cute.attention(q, k, v)
    with sdpa_kernel(ATTENTION_BACKENDS[_attention_backend], set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)


class SequenceParallel(Protocol):
    """What the forward needs from a sequence-parallel scheme (vidfusion.parallel.sequence_parallel implements it)."""

    def shard(
        self, ctx: torch.Tensor, vid: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """This rank's text tokens, video tokens and video RoPE rows."""
        ...

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of local queries [B, H, S_local, hd] over the keys of all ranks."""
        ...

    def gather(self, vid: torch.Tensor) -> torch.Tensor:
        """All video tokens [B, N, C], in the original order, from every rank's [B, N_local, C]."""
        ...


# ----------------------------------------------------------------------------------------------------------------------
# Modules


class PatchEmbed(nn.Module):
    """Text projection plus video patchify; 1.0 patches each frame with a conv, 1.5 patches 2x2x2 with a linear."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        p, pt, d = cfg.patch_size, cfg.patch_size_t, cfg.inner_dim
        if pt is None:
            self.proj: nn.Module = nn.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p, bias=cfg.patch_bias)
        else:
            # patch_bias is ignored here, as in diffusers: the 1.5 checkpoints have a bias on this linear.
            self.proj = nn.Linear(cfg.in_channels * pt * p * p, d)
        self.text_proj = nn.Linear(cfg.text_embed_dim, d)
        if cfg.use_learned_positional_embeddings:
            frames = (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
            table = sincos_pos_embed_3d(cfg, frames, cfg.sample_height // p, cfg.sample_width // p)
            # Initialised like diffusers (zero text rows, sin-cos video rows); checkpoints overwrite it.
            table = F.pad(table, (0, 0, cfg.max_text_seq_length, 0)).float()[None]
            self.register_buffer("pos_embedding", table, persistent=True)

    def forward(self, context: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context [B, L, text_dim], x [B, F, C, H, W] -> text tokens [B, L, D], video tokens [B, F'H'W', D]."""
        p, pt = self.cfg.patch_size, self.cfg.patch_size_t
        b = x.shape[0]
        if pt is None:
            v = self.proj(rearrange(x, "b f c h w -> (b f) c h w"))
            v = rearrange(v, "(b f) d h w -> b (f h w) d", b=b)
        else:
            v = rearrange(x, "b (f pt) c (h ph) (w pw) -> b (f h w) (c pt ph pw)", pt=pt, ph=p, pw=p)
            v = self.proj(v)
        return self.text_proj(context), v


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class LayerNormZero(nn.Module):
    """One LayerNorm shared by both streams, with separate (shift, scale, gate) for video and for text."""

    def __init__(self, cond_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate, c_shift, c_scale, c_gate = self.linear(F.silu(temb))[:, None].chunk(6, dim=-1)
        x = layer_norm_modulate(x, self.norm, shift, scale)
        ctx = layer_norm_modulate(ctx, self.norm, c_shift, c_scale)
        return x, ctx, gate, c_gate


class Attention(nn.Module):
    """Joint text+video self-attention with per-head q/k LayerNorm; RoPE on video tokens only.

    `rope`, when given, covers the joint sequence (see `with_text_identity`); `attn_fn` is `attention` or a
    sequence-parallel attention that exchanges heads for tokens across ranks.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * head_dim, bias=bias)
        self.to_k = nn.Linear(dim, heads * head_dim, bias=bias)
        self.to_v = nn.Linear(dim, heads * head_dim, bias=bias)
        self.norm_q = nn.LayerNorm(head_dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(head_dim, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim)])  # ModuleList only for the "to_out.0" name

    def forward(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = attention,
    ):
        n_text = ctx.shape[1]
        h = torch.cat([ctx, x], dim=1)
        q, k, v = qkv_projection(h, self.to_q, self.to_k, self.to_v, self.heads)
        q, k = qk_norm_rope(q, k, self.norm_q, self.norm_k, rope)
        out = self.to_out[0](rearrange(attn_fn(q, k, v), "b n s d -> b s (n d)"))
        return out[:, n_text:], out[:, :n_text]


class GELUTanhProj(nn.Module):
    """Holds the first MLP linear under the checkpoint name net.0.proj; `gelu_tanh_mlp` applies it."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        # Layout (proj+GELU, dropout, linear, dropout) fixes the checkpoint names net.0.proj and net.2.
        self.net = nn.Sequential(
            GELUTanhProj(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p_drop = self.dropout if self.training else 0.0
        return F.dropout(gelu_tanh_mlp(x, self.net[0].proj, self.net[2], p_drop), p_drop, training=p_drop > 0)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.inner_dim
        self.norm1 = LayerNormZero(cfg.time_embed_dim, d, cfg.norm_elementwise_affine, cfg.norm_eps)
        self.attn1 = Attention(d, cfg.num_attention_heads, cfg.attention_head_dim, cfg.attention_bias)
        self.norm2 = LayerNormZero(cfg.time_embed_dim, d, cfg.norm_elementwise_affine, cfg.norm_eps)
        self.ff = FeedForward(d, cfg.dropout)

    def forward(self, x, ctx, temb, rope, attn_fn=attention):
        x_in, ctx_in, gate, c_gate = self.norm1(x, ctx, temb)
        x_out, ctx_out = self.attn1(x_in, ctx_in, rope, attn_fn)
        x, ctx = torch.addcmul(x, gate, x_out), torch.addcmul(ctx, c_gate, ctx_out)

        x_in, ctx_in, gate, c_gate = self.norm2(x, ctx, temb)
        n_text = ctx.shape[1]
        out = self.ff(torch.cat([ctx_in, x_in], dim=1))  # one matmul for both streams
        return torch.addcmul(x, gate, out[:, n_text:]), torch.addcmul(ctx, c_gate, out[:, :n_text])


class AdaLayerNorm(nn.Module):
    """Final norm: LayerNorm modulated by (shift, scale) from the timestep embedding, shift first."""

    def __init__(self, cond_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(temb))[:, None].chunk(2, dim=-1)
        return layer_norm_modulate(x, self.norm, shift, scale)


class CogVideoXTransformer(nn.Module):
    """The diffusion transformer; `state_dict()` is interchangeable with diffusers' CogVideoXTransformer3DModel."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        cfg = self.config = config
        d = cfg.inner_dim
        self.patch_embed = PatchEmbed(cfg)
        self.time_embedding = TimestepEmbedding(d, cfg.time_embed_dim)
        self.ofs_embedding = TimestepEmbedding(cfg.ofs_embed_dim, cfg.ofs_embed_dim) if cfg.ofs_embed_dim else None
        self.transformer_blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm_final = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine)
        self.norm_out = AdaLayerNorm(cfg.time_embed_dim, d, cfg.norm_elementwise_affine, cfg.norm_eps)
        self.proj_out = nn.Linear(d, (cfg.patch_size_t or 1) * cfg.patch_size**2 * cfg.out_channels)
        self.gradient_checkpointing = False
        # Set by vidfusion.parallel.enable_sequence_parallel: shards the tokens over ranks (Ulysses).
        self.sequence_parallel: SequenceParallel | None = None
        # Opt-in sampling approximation that may skip blocks 1.. (see vidfusion.models.step_cache); None = exact.
        self.step_cache: FirstBlockCache | None = None
        self._pos_cache: dict[tuple, Any] = {}

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        timestep: torch.Tensor,
        ofs: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """x [B, F, C, H, W] latents, context [B, L, text_dim], timestep [B] -> v-prediction [B, F, C_out, H, W].

        ofs is only for CogVideoX1.5-I2V (its pipeline passes 2.0).
        """
        _, f, _, h, w = x.shape
        self._check_input(x, context, ofs)

        temb = self.embed_time(timestep, ofs, x)
        ctx, vid = self.patch_embed(context, x)
        ctx, vid = self.add_abs_positions(ctx, vid, f, h, w)
        p_drop = self.config.dropout if self.training else 0.0
        ctx, vid = F.dropout(ctx, p_drop), F.dropout(vid, p_drop)
        rope = self.rope(f, h, w, x.device)

        # Every op outside attention is token-wise, so under sequence parallelism each rank runs the blocks on its
        # share of the tokens and only attention talks to the other ranks.
        sp = self.sequence_parallel
        attn_fn = attention
        if sp is not None:
            if self.step_cache is not None:
                # Each rank would decide on its own shard, and ranks that disagree would deadlock in attention.
                raise VidFusionError("step_cache cannot run with sequence parallel; set step_cache=None or use 1 GPU")
            ctx, vid, rope = sp.shard(ctx, vid, rope)
            attn_fn = sp.attention
        if rope is not None:
            rope = with_text_identity(rope, ctx.shape[1])

        if self.step_cache is not None:
            vid, ctx = self.step_cache.run(x.shape, self.transformer_blocks, vid, ctx, temb, rope, attn_fn)
        else:
            for block in self.transformer_blocks:
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    vid, ctx = checkpoint(block, vid, ctx, temb, rope, attn_fn, use_reentrant=False)
                else:
                    vid, ctx = block(vid, ctx, temb, rope, attn_fn)

        vid = self.proj_out(self.norm_out(self.norm_final(vid), temb))
        if sp is not None:
            vid = sp.gather(vid)  # after proj_out: patch outputs are narrower than the hidden size
        return self.unpatchify(vid, f, h, w)

    # --- pieces of forward ---

    def embed_time(self, timestep: torch.Tensor, ofs: torch.Tensor | float | None, x: torch.Tensor) -> torch.Tensor:
        cfg, dtype = self.config, x.dtype
        timestep = torch.as_tensor(timestep, device=x.device).reshape(-1)
        e = timestep_embedding(timestep, cfg.inner_dim, cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(e.to(dtype))  # the sinusoid is fp32; the MLP runs in the model dtype
        if self.ofs_embedding is not None:
            ofs = torch.as_tensor(ofs, device=x.device).reshape(-1)
            e = timestep_embedding(ofs, cfg.ofs_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift)
            temb = temb + self.ofs_embedding(e.to(dtype))
        return temb

    def add_abs_positions(self, ctx: torch.Tensor, vid: torch.Tensor, f: int, h: int, w: int):
        cfg = self.config
        if cfg.use_learned_positional_embeddings:
            # Frames are the outermost token axis, so fewer frames = leading rows of the table.
            table = self.patch_embed.pos_embedding[:, : ctx.shape[1] + vid.shape[1]].to(vid.dtype)
            return ctx + table[:, : ctx.shape[1]], vid + table[:, ctx.shape[1] :]
        if not cfg.use_rotary_positional_embeddings:
            key = ("sincos", f, h, w, vid.device)
            if key not in self._pos_cache:
                p = cfg.patch_size
                self._pos_cache[key] = sincos_pos_embed_3d(cfg, f, h // p, w // p, vid.device)
            return ctx, vid + self._pos_cache[key].to(vid.dtype)  # text rows of the table are zero
        return ctx, vid

    def rope(self, f: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.config.use_rotary_positional_embeddings:
            return None
        key = ("rope", f, h, w, device)
        if key not in self._pos_cache:
            self._pos_cache[key] = rope_3d(self.config, f, h, w, device)
        return self._pos_cache[key]

    def unpatchify(self, vid: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
        p, pt = self.config.patch_size, self.config.patch_size_t
        if pt is None:
            return rearrange(vid, "b (f h w) (c ph pw) -> b f c (h ph) (w pw)", f=f, h=h // p, w=w // p, ph=p, pw=p)
        return rearrange(
            vid, "b (f h w) (c pt ph pw) -> b (f pt) c (h ph) (w pw)", f=f // pt, h=h // p, w=w // p, pt=pt, ph=p, pw=p
        )

    def _check_input(self, x: torch.Tensor, context: torch.Tensor, ofs) -> None:
        cfg = self.config
        _, f, c, h, w = x.shape
        p, pt = cfg.patch_size, cfg.patch_size_t
        if c != cfg.in_channels:
            raise VidFusionError(
                f"latent has {c} channels but the transformer expects {cfg.in_channels}; "
                "concatenate the image latent for I2V models (or drop it for T2V)"
            )
        if h % p or w % p:
            raise VidFusionError(
                f"latent size {h}x{w} is not divisible by patch_size={p}; "
                f"use a video size that is a multiple of {8 * p} pixels"
            )
        if pt and f % pt:
            raise VidFusionError(
                f"{f} latent frames is not divisible by patch_size_t={pt}; prepend one latent frame "
                "(as the CogVideoX1.5 pipelines do) or choose num_frames giving an even latent count"
            )
        if context.shape[-1] != cfg.text_embed_dim:
            raise VidFusionError(
                f"text embeddings have width {context.shape[-1]}, expected {cfg.text_embed_dim}; "
                "use the matching text encoder (T5-v1.1-XXL for CogVideoX)"
            )
        if self.ofs_embedding is not None and ofs is None:
            raise VidFusionError("this transformer (CogVideoX1.5-I2V) needs ofs; pass ofs=2.0 as its pipeline does")
        if cfg.use_learned_positional_embeddings:
            n_text, max_frames = cfg.max_text_seq_length, (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
            if (h, w) != (cfg.sample_height, cfg.sample_width) or f > max_frames:
                raise VidFusionError(
                    f"latent {f}x{h}x{w} does not fit the learned position table ({max_frames}x{cfg.sample_height}x"
                    f"{cfg.sample_width}); use that latent size (CogVideoX-5B-I2V: 480x720, at most 49 frames)"
                )
            if context.shape[1] != n_text:
                raise VidFusionError(
                    f"text length {context.shape[1]} != {n_text} learned text positions; "
                    f"pad or truncate the prompt tokens to {n_text}"
                )
