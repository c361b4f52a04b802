"""CogVideoX 3D causal VAE: video [B, 3, T, H, W] in [-1, 1] <-> latents [B, 16, (T - 1) / 4 + 1, H / 8, W / 8].

Parameter names and config keys are those of diffusers' `AutoencoderKLCogVideoX`, so published `vae/` folders load
without renaming and what we save loads in diffusers. The numbers match diffusers too, which fixes some choices that
would otherwise look arbitrary:

- Time is processed in chunks, 8 + r frames first (r = T mod 8, so 9 for 49 frames) then 8 at a time when encoding, and
  2 + (t mod 2) latents first then 2 at a time when decoding. Causal convolutions carry their last 2 input frames from
  chunk to chunk, but GroupNorm statistics and temporal pooling stay within a chunk. The chunking therefore changes
  the output (decoding a whole sequence at once differs by up to 1.5), and the encoder is causal only at chunk
  boundaries: the first 8k + 1 frames encode exactly as they do inside a longer video, other prefixes do not.
- Decoding an even number of latents gives 4t frames, not 4(t - 1) + 1: every chunk is then a full 2-latent chunk,
  which upsamples to 8 frames. `pixel_num_frames` says what `decode` returns.
- Spatial tiling (off by default) tiles, blends and crops exactly as diffusers, including its in-place blending order,
  so tiled results match too. Tiles still run through the temporal chunking above.
- `DiagonalGaussian.kl` sums over every non-batch axis; diffusers' image-VAE version sums over axes 1..3 only, which
  for video leaves the width axis unsummed.
- Inference speed: `fuse_norms()` swaps every norm -> SiLU -> causal-conv padding for one compiled pointwise kernel
  with GroupNorm statistics from reductions that fill the GPU (5B decode on an H100: 2.27 -> 1.05 s). The per-frame
  2D convs of the resamplers always run as 1 x k x k 3D convs, which saves two full-size copies per call.
  `fuse_norms(frame_slice=n)` also runs the full-resolution level on n-frame slices of each time chunk (statistics
  still chunk-wide, so the numbers stay): memory, at some speed. A sliced layer holds its input and output but no
  full-size temporaries, and the upsampler feeding the level is never held whole: its next resnet recomputes its
  slices for each of its three passes. The lower levels peak below that level even unsliced, so they run unsliced,
  at full speed.
- A few constants are hard-coded rather than taken from the config (GroupNorm eps 1e-6 in the encoder's output norm
  and in every SpatialNorm3D, SiLU before the output convolutions), because diffusers hard-codes them.
- `scaling_factor`, `shift_factor`, `latents_mean/std`, `force_upcast` and `invert_scale_latents` are carried for the
  pipeline; `encode` and `decode` never scale. `use_quant_conv` / `use_post_quant_conv` are refused: no published
  checkpoint has them and diffusers sizes them for 3 channels, so they cannot run there either.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidfusion.errors import VidFusionError
from vidfusion.io.config import config_from_dict

DIFFUSERS_CLASS_NAME = "AutoencoderKLCogVideoX"
DOWN_BLOCK_TYPE = "CogVideoXDownBlock3D"
UP_BLOCK_TYPE = "CogVideoXUpBlock3D"

# The VAE was trained on chunks of these sizes; other sizes give visibly worse results (see the module docstring).
SAMPLE_FRAMES_PER_CHUNK = 8
LATENT_FRAMES_PER_CHUNK = 2

# Convolution inputs above this many elements are split in time (diffusers' CogVideoXSafeConv3d): cuDNN fails on them.
MAX_CONV_ELEMENTS = 2**30

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "mish": nn.Mish,
}

ConvCache = dict[nn.Module, torch.Tensor]  # causal conv -> its last 2 (padded) input frames from the previous chunk


# ----------------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VAEConfig:
    """The keys of a diffusers `AutoencoderKLCogVideoX` config.json; defaults are diffusers' (the CogVideoX-2B VAE)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (DOWN_BLOCK_TYPE,) * 4
    up_block_types: tuple[str, ...] = (UP_BLOCK_TYPE,) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    act_fn: str = "silu"
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression_ratio: int = 4
    sample_height: int = 480
    sample_width: int = 720
    scaling_factor: float = 1.15258426
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    invert_scale_latents: bool = False
    # Not a diffusers key: a decoder wider than the encoder (None = the same widths, as every CogVideoX VAE). Small
    # VAEs gain reconstruction quality mostly from decoder width, while the encoder's cost is paid on every training
    # step of the diffusion model, so the shipped tiny VAE keeps a narrow encoder. Written to config.json only when set.
    decoder_block_out_channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # JSON gives lists (and diffusers types the ratio as float); store tuples/ints so configs compare and hash.
        for name in ("down_block_types", "up_block_types", "block_out_channels", "latents_mean", "latents_std",
                     "decoder_block_out_channels"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        ratio = self.temporal_compression_ratio
        levels = len(self.block_out_channels) - 1
        if ratio < 1 or ratio != int(ratio) or int(ratio) & (int(ratio) - 1) or int(ratio) > 2**levels:
            raise VidFusionError(
                f"temporal_compression_ratio={ratio} is not a power of two up to {2**levels}; "
                f"use 4 (every CogVideoX VAE) or another power of two up to 2**(len(block_out_channels) - 1)"
            )
        object.__setattr__(self, "temporal_compression_ratio", int(ratio))
        n = len(self.block_out_channels)
        if self.down_block_types != (DOWN_BLOCK_TYPE,) * n or self.up_block_types != (UP_BLOCK_TYPE,) * n:
            raise VidFusionError(
                f"down/up_block_types must be {n} x {DOWN_BLOCK_TYPE!r} / {UP_BLOCK_TYPE!r} "
                f"(one per block_out_channels entry); got {list(self.down_block_types)} / {list(self.up_block_types)}"
            )
        decoder = self.decoder_block_out_channels
        if decoder is not None and len(decoder) != n:
            raise VidFusionError(
                f"decoder_block_out_channels has {len(decoder)} entries but block_out_channels has {n}; give one "
                f"width per level (or leave it unset for the encoder's widths)"
            )
        if self.act_fn not in ACTIVATIONS:
            raise VidFusionError(f"act_fn={self.act_fn!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
        if self.use_quant_conv or self.use_post_quant_conv:
            raise VidFusionError(
                "use_quant_conv/use_post_quant_conv are not supported (no CogVideoX VAE has them); set both to false"
            )

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        return self.decoder_block_out_channels or self.block_out_channels

    @property
    def spatial_compression_ratio(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAEConfig:
        """Read a diffusers `vae/config.json` dict (see `config_from_dict` for unknown keys)."""
        return config_from_dict(cls, d, (DIFFUSERS_CLASS_NAME,), "VAE")

    def to_dict(self) -> dict[str, Any]:
        """The diffusers `vae/config.json` contents."""
        d: dict[str, Any] = {"_class_name": DIFFUSERS_CLASS_NAME}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "decoder_block_out_channels" and value is None:
                continue  # keep configs of standard layouts byte-identical to diffusers'
            d[f.name] = list(value) if isinstance(value, tuple) else value
        return d


VAE_PRESETS: dict[str, VAEConfig] = {
    "cogvideox-2b": VAEConfig(scaling_factor=1.15258426),
    # The 5B VAE (weights and scale) is also the one CogVideoX 1.5 uses; 1.5 additionally sets invert_scale_latents.
    "cogvideox-5b": VAEConfig(scaling_factor=0.7),
    # Same layout and compression (4x time, 8x space, 16 latent channels) at 3.3M parameters, for CPU experiments.
    "tiny": VAEConfig(
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        sample_height=128,
        sample_width=128,
        scaling_factor=1.0,
    ),
}


def tiny_random_config(**overrides: Any) -> VAEConfig:
    """A VAE config small enough for unit tests (0.5M parameters) that keeps the published block layout."""
    base = dict(
        block_out_channels=(8, 16, 16, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_height=64,
        sample_width=64,
        scaling_factor=1.0,
    )
    return VAEConfig(**{**base, **overrides})


# ------------------------------------------------------------------------------------------------------ frame counts


def latent_num_frames(num_frames: int, temporal_compression_ratio: int = 4) -> int:
    """Latent frames for a video of `num_frames`; raises unless num_frames = k * ratio + 1."""
    r = temporal_compression_ratio
    if num_frames < 1 or (num_frames - 1) % r:
        below = (num_frames - 1) // r * r + 1
        options = sorted({max(below, 1), below + r}, key=lambda n: (abs(n - num_frames), n))
        raise VidFusionError(
            f"num_frames={num_frames} is not {r}k+1 (the VAE keeps frame 0 and compresses the rest {r}x); "
            f"use {' or '.join(map(str, options))}"
        )
    return (num_frames - 1) // r + 1


def pixel_num_frames(latent_frames: int, temporal_compression_ratio: int = 4) -> int:
    """Frames `decode` returns for `latent_frames` latents (4t - 3 for odd t, 4t for even t; see module docstring)."""
    r = temporal_compression_ratio
    return r * (latent_frames - 1) + 1 if latent_frames % 2 else r * latent_frames


def _chunk_bounds(num_frames: int, chunk: int) -> list[tuple[int, int]]:
    """diffusers' time chunks; the remainder joins the first (49 frames -> 9, 8, 8, ...; 13 latents -> 3, 2, ...)."""
    remainder = num_frames % chunk
    count = max(num_frames // chunk, 1)
    ends = [min(chunk * (i + 1) + remainder, num_frames) for i in range(count)]
    return list(zip([0] + ends[:-1], ends))


# --------------------------------------------------------------------------------------------------------- layers


def _conv3d_in_time_parts(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), computed in time slices when x is huge; slices overlap by kernel - 1 frames, so nothing changes."""
    if x.numel() <= MAX_CONV_ELEMENTS:
        return conv(x)
    overlap = conv.kernel_size[0] - 1
    parts = x.chunk(x.numel() // MAX_CONV_ELEMENTS + 1, dim=2)
    out = [conv(parts[0])]
    for prev, part in zip(parts, parts[1:]):
        out.append(conv(torch.cat([prev[:, :, prev.shape[2] - overlap:], part], dim=2)))
    return torch.cat(out, dim=2)


class CausalConv3d(nn.Module):
    """3D conv, zero-padded in space, padded in time on the past side only: with the previous chunk's last frames,
    or at the start of a video with copies of frame 0 (so a still image behaves like a static video)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.time_pad = kernel_size - 1
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=(0, kernel_size // 2, kernel_size // 2))

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        if self.time_pad:
            past = cache.get(self)
            if past is None:
                past = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x = torch.cat([past, x], dim=2)
        return self.conv_padded(x, cache)

    def conv_padded(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        """The convolution of an input that already carries its `time_pad` past frames in front."""
        if self.time_pad:
            cache.pop(self, None)  # x already holds these frames: free them before the copy
            cache[self] = x[:, :, -self.time_pad:].clone()  # clone: do not keep the whole padded chunk alive
        return _conv3d_in_time_parts(self.conv, x)


def _resize(zq: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-resize latents to (frames, height, width), keeping frame 0 apart as the temporal upsampling does."""
    frames, height, width = size
    if frames > 1 and frames % 2 == 1:
        first = F.interpolate(zq[:, :, :1], size=(1, height, width))
        rest = F.interpolate(zq[:, :, 1:], size=(frames - 1, height, width))
        return torch.cat([first, rest], dim=2)
    return F.interpolate(zq, size=size)


def _resize_like(zq: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Nearest-resize latents to a decoder feature map (a no-op in any axis whose size already matches)."""
    return _resize(zq, (f.shape[2], f.shape[3], f.shape[4]))


def _frame_slices(frames: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of time slices of `size` frames, the remainder first (9 frames by 2 -> 1, 2, 2, 2, 2): in slices
    of 1, 2 or 4 only a video's first chunk has a remainder (49 frames: 9, 8, 8, ...), and its first slice, which
    has no past, is a graph of its own for the compiled `norm_silu_pad` anyway."""
    return list(itertools.pairwise([0, *range(frames % size or size, frames + 1, size)]))


def group_norm_stats(x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm's mean and 1 / std per (sample, group), [B, G] in fp32, for `norm_silu_pad`.

    F.group_norm reduces each group in one thread block: 32 blocks for a batch of one, each over 12M elements at
    480 x 720, which took 35% of an H100's eager 5B decode. Here the sums run per (group, channel, frame) row first,
    thousands of rows that fill the GPU, reading x in its own dtype and accumulating in fp32, and are then added up.
    The variance is E[x^2] - mean^2 in fp32 (clamped at 0); GroupNorm inputs here are O(1)-scaled activations, where
    its cancellation error is far below bf16's rounding.
    """
    return _stats_from_sums(*_group_sums(x, groups), eps)


def _group_sums(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per (sample, group) sum and sum of squares of x, [B, G] in fp32, and the number of elements they sum."""
    b, c, t, h, w = x.shape
    if _is_channels_last(x):
        # Channels innermost: reshaping to the rows below would copy all of x. Sum each (row, channel) over the
        # width instead (a view of x), then the rows, then the channels of a group.
        rows = x.permute(0, 2, 3, 4, 1).reshape(b, t * h, w, c)
        total = rows.sum(dim=2, dtype=torch.float32).sum(dim=1)
        squares = torch.linalg.vector_norm(rows, dim=2, dtype=torch.float32).square().sum(dim=1)
        return total.view(b, groups, -1).sum(-1), squares.view(b, groups, -1).sum(-1), x.numel() // (b * groups)
    rows = x.reshape(b, groups, -1, h * w)
    total = rows.sum(dim=-1, dtype=torch.float32).sum(dim=-1)
    squares = torch.linalg.vector_norm(rows, dim=-1, dtype=torch.float32).square().sum(dim=-1)
    return total, squares, rows.shape[2] * rows.shape[3]


def _is_channels_last(x: torch.Tensor) -> bool:
    """x is laid out [B, T, H, W, C] in memory (and is not also plainly contiguous, as when C or T*H*W is 1)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def _stats_from_sums(
    total: torch.Tensor, squares: torch.Tensor, count: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0.0)
    return mean, torch.rsqrt(var + eps)


def norm_silu_pad(
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    past: torch.Tensor | None = None,
    time_pad: int = 2,
    channels_last: bool = False,
) -> torch.Tensor:
    """cat([past, SiLU(GroupNorm(x) * resize(scale) + resize(shift))], time) from `group_norm_stats`' mean and
    rstd: a norm, its activation and the next causal conv's time padding as one pointwise function, for
    `CogVideoXVAE.fuse_norms`.

    torch.compile turns it into one kernel that reads x once and writes the padded conv input directly (fp32 inside,
    one rounding at the end). `scale` / `shift` are the spatial norm's conv_y / conv_b outputs at latent resolution:
    those convs are 1x1x1, so they commute with the nearest resize, which the kernel then does by indexing instead
    of materialising two full-resolution tensors. `past` is the previous chunk's last frames (None: the first chunk
    repeats its own first frame, as CausalConv3d does). `channels_last` writes the result [B, T, H, W, C] in memory
    (whatever x's layout), the layout cuDNN's 3D convolutions run natively in bf16 (see `fused_norm_conv`).
    """
    b, c = x.shape[:2]
    groups = mean.shape[1]
    grouped = x.reshape(b, groups, -1).float()
    h = ((grouped - mean[..., None]) * rstd[..., None]).view(x.shape)
    h = h * weight.view(1, c, 1, 1, 1).float() + bias.view(1, c, 1, 1, 1).float()
    if scale is not None:
        h = h * _resize_like(scale, x).float() + _resize_like(shift, x).float()
    h = F.silu(h).to(x.dtype)
    if time_pad:
        if past is None:
            past = h[:, :, :1].expand(-1, -1, time_pad, -1, -1)
        h = torch.cat([past, h], dim=2)
    return h.contiguous(memory_format=torch.channels_last_3d) if channels_last else h


class SpatialNorm3D(nn.Module):
    """Decoder norm conditioned on the latent: GroupNorm(f) * conv_y(zq) + conv_b(zq) (MoVQ's spatial norm)."""

    def __init__(self, channels: int, latent_channels: int, groups: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv_y = CausalConv3d(latent_channels, channels, kernel_size=1)
        self.conv_b = CausalConv3d(latent_channels, channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        zq = _resize_like(zq, f)
        return self.norm_layer(f) * self.conv_y(zq, cache) + self.conv_b(zq, cache)


def fused_norm_conv(
    fuse: Callable[..., torch.Tensor],
    norm: nn.Module,
    conv: CausalConv3d,
    x: torch.Tensor | Upsampled,
    zq: torch.Tensor | None,
    cache: ConvCache,
    frame_slice: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """conv(SiLU(norm(x))) through `fuse` (norm_silu_pad, possibly compiled); norm is a GroupNorm or SpatialNorm3D.

    With `frame_slice`, the statistics still pool all of x, but the pointwise part and the conv run on time slices
    of that many frames, written into `out` (new if None). Each slice is a chunk to the causal conv: it starts from
    the cache, and conv_padded leaves there its last padded frames, the next slice's past; after the last slice the
    cache holds what the unsliced call leaves. A slice reads only its own frames of x, so `out` may be x itself.
    x may then also be `Upsampled`, computed slice by slice twice: for the statistics, then for the conv. A tensor x
    that fits in one slice runs unsliced: the conv's own output is then the result (F.conv3d has no `out=`, so
    every other slice costs a copy into `out`).

    Sliced, the conv inputs and the result are channels-last ([B, T, H, W, C] in memory): cuDNN runs bf16 3D
    convolutions in that layout, and on [B, C, T, H, W] tensors it converted every input and output, which took
    285 ms of the 1.58 s 1-frame-sliced 5B decode on an H100. The fused kernel writes that layout for free, and a
    time slice of it is one contiguous block.
    """
    scale = shift = None
    if isinstance(norm, SpatialNorm3D):
        scale, shift = norm.conv_y(zq, cache), norm.conv_b(zq, cache)  # 1x1x1 convs at latent resolution
        norm = norm.norm_layer
    slices = [(0, x.shape[2])] if frame_slice is None else _frame_slices(x.shape[2], frame_slice)
    if isinstance(x, Upsampled):
        mean, rstd = x.group_norm_stats(norm.num_groups, norm.eps, slices)
    else:
        mean, rstd = group_norm_stats(x, norm.num_groups, norm.eps)
        if len(slices) == 1:
            padded = fuse(x, mean, rstd, norm.weight, norm.bias, scale, shift, cache.get(conv), conv.time_pad)
            return conv.conv_padded(padded, cache)
    if scale is not None:
        # Resize in time now (cheap at latent resolution) so that each slice takes its own frames' modulation, which
        # `fuse` then only resizes in space: a time slice of the resized latents is not the resize of a time slice.
        scale, shift = (_resize(t, (x.shape[2], t.shape[3], t.shape[4])) for t in (scale, shift))
    for a, b in slices:
        part_scale, part_shift = (None, None) if scale is None else (scale[:, :, a:b], shift[:, :, a:b])
        padded = fuse(_frames(x, a, b), mean, rstd, norm.weight, norm.bias, part_scale, part_shift, cache.get(conv),
                      conv.time_pad, channels_last=True)
        part = conv.conv_padded(padded, cache)
        del padded  # before `out` and before the next slice makes its own
        if out is None:
            out = torch.empty((*part.shape[:2], x.shape[2], *part.shape[3:]), dtype=part.dtype, device=part.device,
                              memory_format=torch.channels_last_3d)
        out[:, :, a:b] = part
        del part
    return out


class ResnetBlock3D(nn.Module):
    """norm -> act -> causal conv, twice, plus a (1x1x1-projected) skip. Decoder blocks use SpatialNorm3D."""

    def __init__(self, in_channels: int, out_channels: int, config: VAEConfig, spatial_norm: bool = False):
        super().__init__()
        groups, latent = config.norm_num_groups, config.latent_channels
        if spatial_norm:
            self.norm1 = SpatialNorm3D(in_channels, latent, groups)
            self.norm2 = SpatialNorm3D(out_channels, latent, groups)
        else:
            self.norm1 = nn.GroupNorm(groups, in_channels, eps=config.norm_eps)
            self.norm2 = nn.GroupNorm(groups, out_channels, eps=config.norm_eps)
        self.act = ACTIVATIONS[config.act_fn]()
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.fuse: Callable[..., torch.Tensor] | None = None  # set by CogVideoXVAE.fuse_norms
        self.frame_slice: int | None = None  # likewise (full-resolution resnets only)

    @property
    def sliced(self) -> bool:
        return self.fuse is not None and self.frame_slice is not None

    def _norm(self, norm: nn.Module, h: torch.Tensor, zq: torch.Tensor | None, cache: ConvCache) -> torch.Tensor:
        return norm(h) if zq is None else norm(h, zq, cache)

    def forward(self, x: torch.Tensor | Upsampled, cache: ConvCache, zq: torch.Tensor | None = None) -> torch.Tensor:
        if self.sliced:
            return self._forward_sliced(x, cache, zq)
        if self.fuse is not None:
            h = fused_norm_conv(self.fuse, self.norm1, self.conv1, x, zq, cache)
            h = fused_norm_conv(self.fuse, self.norm2, self.conv2, h, zq, cache)
        else:
            h = self.conv1(self.act(self._norm(self.norm1, x, zq, cache)), cache)
            h = self.conv2(self.act(self._norm(self.norm2, h, zq, cache)), cache)
        skip = x if self.conv_shortcut is None else _conv3d_in_time_parts(self.conv_shortcut, x)
        return h + skip

    def _forward_sliced(
        self, x: torch.Tensor | Upsampled, cache: ConvCache, zq: torch.Tensor | None
    ) -> torch.Tensor:
        """The fused forward in frame slices, with one full-size tensor besides x: conv2 writes over its input
        (unless autograd keeps that input for the backward pass) and the skip is added into it, slice by slice where
        it is projected or upsampled. An `Upsampled` x is computed three times, slice by slice (norm1's statistics,
        conv1, the skip), never whole."""
        h = fused_norm_conv(self.fuse, self.norm1, self.conv1, x, zq, cache, self.frame_slice)
        h = fused_norm_conv(self.fuse, self.norm2, self.conv2, h, zq, cache, self.frame_slice,
                            out=None if h.requires_grad else h)
        if isinstance(x, torch.Tensor) and self.conv_shortcut is None:
            h += x  # in place, so nothing full-size is made: one pass instead of one per slice
            return h
        for a, b in _frame_slices(x.shape[2], self.frame_slice):
            skip = _frames(x, a, b)
            h[:, :, a:b] += skip if self.conv_shortcut is None else self.conv_shortcut(skip)
        return h


def _per_frame_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 2D conv on every frame of [B, C, T, H, W], run as a 1 x k x k 3D conv: the same sums, without the two
    full-size copies that folding time into the batch (and back) costs."""
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, *conv.stride), padding=(0, *conv.padding))


class Downsample3D(nn.Module):
    """Optionally halve time (average frame pairs, frame 0 kept apart), then halve space by a strided per-frame conv."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compress_time:
            first, rest = (x[:, :, :1], x[:, :, 1:]) if x.shape[2] % 2 else (x[:, :, :0], x)
            rest = rearrange(rest, "b c (t two) h w -> b c t two h w", two=2).mean(dim=3)
            x = torch.cat([first, rest], dim=2)
        x = F.pad(x, (0, 1, 0, 1))  # asymmetric (right/bottom) padding, as the checkpoints were trained
        return _per_frame_conv(self.conv, x)


class Upsample3D(nn.Module):
    """Nearest 2x in space, and in time T -> 2T - 1 (frame 0 not doubled) or 2T for even T; then a per-frame conv."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.transposed = False  # set by CogVideoXVAE.fuse_norms; see `frames`
        self._transposed_cache: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = self.source_frames(x)
        return self.frames(x if source is None else x.index_select(2, source))

    def source_frames(self, x: torch.Tensor) -> torch.Tensor | None:
        """Output frame j repeats input frame source[j] (nearest 2x in time, frame 0 not doubled for odd counts);
        None when output frame j is input frame j."""
        t = x.shape[2]
        if not self.compress_time or t == 1:
            return None
        return torch.arange(t, device=x.device).repeat_interleave(2)[t % 2:]  # 0 0 1 1 ... even t; 0 1 1 2 2 ... odd

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """The output frames that repeat x's frames, one each (x: input frames picked by `source_frames`): the conv
        is per frame, so any of them can be computed alone.

        With `transposed` (fused inference), nearest 2x then the 3x3 conv runs as one stride-2 transposed 4x4 conv
        on x: each output pixel of the pair sees only two distinct input pixels per axis, so the conv folds into
        taps on x with summed weights (`_transposed_weight`). The same sums in another order, with 4 taps instead of
        9 per output pixel and no upsampled tensor: in the 5B decode the nearest-upsample kernel alone took 193 ms
        of 1.48 s (1-frame slices, H100), where the full-resolution upsampler runs three times per chunk."""
        if self.transposed:
            return F.conv_transpose3d(x, self._transposed_weight(), self.conv.bias, stride=(1, 2, 2), padding=(0, 1, 1))
        return _per_frame_conv(self.conv, F.interpolate(x, scale_factor=(1, 2, 2)))

    def _transposed_weight(self) -> torch.Tensor:
        """[C_in, C_out, 1, 4, 4] weights of the transposed conv equal to nearest 2x, then the 3x3 conv (padding 1).

        Per axis, output 2i sees (x[i-1], x[i], x[i]) through taps (w0, w1, w2), output 2i + 1 sees (x[i], x[i],
        x[i+1]); a transposed conv (stride 2, padding 1) gives output 2i + a the taps k = 2i + a + 1 - 2j of x[j],
        so its 4 taps are (w2, w1 + w2, w0 + w1, w0). Summed in fp32 (or wider), rounded once to the conv's dtype.

        Kept until the weight changes (a new tensor, or its version counter moves, as load_state_dict's in-place copy
        makes it): building it takes a host-to-device copy, which waits for the GPU, at every call otherwise. Not
        kept when autograd tracks the weight, whose gradient then flows through the fold."""
        weight = self.conv.weight
        tracked = torch.is_grad_enabled() and weight.requires_grad
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if tracked or self._transposed_cache is None or self._transposed_cache[0] != key:
            dtype = torch.promote_types(weight.dtype, torch.float32)
            fold = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=dtype).to(weight.device)
            folded = torch.einsum("ak,oikl,bl->ioab", fold, weight.to(dtype), fold).to(weight.dtype).unsqueeze(2)
            if tracked:
                return folded
            self._transposed_cache = key, folded
        return self._transposed_cache[1]


@dataclass
class Upsampled:
    """upsampler(x), never computed whole: the frame-sliced decoder passes the upsampler feeding its full-resolution
    level to that level's first resnet, which computes the frames it needs slice by slice, three times over
    (`ResnetBlock3D._forward_sliced`). Held whole it would take 1.5 GiB per chunk in the 5B decoder (256 channels at
    480 x 720, next to the resnet's 128-channel output); computed three times, its convs cost about 18 TFLOP more
    in the 5B decode of 49 frames (40 as nearest 2x + 3x3 conv; fused, it runs as the 4-tap transposed conv)."""

    upsampler: Upsample3D
    x: torch.Tensor
    source: torch.Tensor | None = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.source = self.upsampler.source_frames(self.x)

    @property
    def shape(self) -> torch.Size:
        b, _, t, h, w = self.x.shape
        frames = t if self.source is None else len(self.source)
        return torch.Size((b, self.upsampler.conv.out_channels, frames, 2 * h, 2 * w))

    def frames(self, a: int, b: int) -> torch.Tensor:
        if self.source is None:  # no time upsampling (the full-resolution one in CogVideoX): a view, not a copy
            return self.upsampler.frames(self.x[:, :, a:b])
        return self.upsampler.frames(self.x.index_select(2, self.source[a:b]))

    def group_norm_stats(
        self, groups: int, eps: float, slices: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`group_norm_stats` of the whole output, its sums accumulated over the given slices."""
        sums = [_group_sums(self.frames(a, b), groups) for a, b in slices]
        total, squares, count = (sum(s) for s in zip(*sums))
        return _stats_from_sums(total, squares, count, eps)


def _frames(x: torch.Tensor | Upsampled, a: int, b: int) -> torch.Tensor:
    """Frames a:b of x."""
    return x.frames(a, b) if isinstance(x, Upsampled) else x[:, :, a:b]


class MidBlock3D(nn.Module):
    """A stack of resnets; the down and up blocks add a resampler after it (and are run layer by layer by
    Encoder3D / Decoder3D)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, config: VAEConfig, spatial_norm: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, config, spatial_norm)
            for i in range(num_layers)
        )

    def forward(self, h: torch.Tensor, cache: ConvCache, zq: torch.Tensor | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            h = resnet(h, cache, zq)
        return h


class DownBlock3D(MidBlock3D):
    def __init__(self, in_channels: int, out_channels: int, config: VAEConfig, downsample: bool, compress_time: bool):
        super().__init__(in_channels, out_channels, config.layers_per_block, config, spatial_norm=False)
        self.downsamplers = nn.ModuleList([Downsample3D(out_channels, compress_time)]) if downsample else None


class UpBlock3D(MidBlock3D):
    def __init__(self, in_channels: int, out_channels: int, config: VAEConfig, upsample: bool, compress_time: bool):
        super().__init__(in_channels, out_channels, config.layers_per_block + 1, config, spatial_norm=True)
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels, compress_time)]) if upsample else None


class Encoder3D(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch = config.block_out_channels
        time_levels = int(math.log2(config.temporal_compression_ratio))
        self.conv_in = CausalConv3d(config.in_channels, ch[0])
        # Time is compressed in the first (highest-resolution) blocks.
        self.down_blocks = nn.ModuleList(
            DownBlock3D(ch[max(i - 1, 0)], ch[i], config, downsample=i < len(ch) - 1, compress_time=i < time_levels)
            for i in range(len(ch))
        )
        self.mid_block = MidBlock3D(ch[-1], ch[-1], 2, config, spatial_norm=False)
        self.norm_out = nn.GroupNorm(config.norm_num_groups, ch[-1], eps=1e-6)
        self.conv_out = CausalConv3d(ch[-1], 2 * config.latent_channels)
        self.fuse: Callable[..., torch.Tensor] | None = None  # set by CogVideoXVAE.fuse_norms

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        h = self.conv_in(x, cache)
        for block in self.down_blocks:  # layer by layer: see Decoder3D.forward
            for resnet in block.resnets:
                h = resnet(h, cache)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h)
        h = self.mid_block(h, cache)
        if self.fuse is not None:
            return fused_norm_conv(self.fuse, self.norm_out, self.conv_out, h, None, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class Decoder3D(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch = config.decoder_channels[::-1]
        time_levels = int(math.log2(config.temporal_compression_ratio))
        self.conv_in = CausalConv3d(config.latent_channels, ch[0])
        self.mid_block = MidBlock3D(ch[0], ch[0], 2, config, spatial_norm=True)
        # Time is expanded in the first (lowest-resolution) blocks, so it is not the mirror image of the encoder.
        self.up_blocks = nn.ModuleList(
            UpBlock3D(ch[max(i - 1, 0)], ch[i], config, upsample=i < len(ch) - 1, compress_time=i < time_levels)
            for i in range(len(ch))
        )
        self.norm_out = SpatialNorm3D(ch[-1], config.latent_channels, config.norm_num_groups)
        self.conv_out = CausalConv3d(ch[-1], config.out_channels)
        self.fuse: Callable[..., torch.Tensor] | None = None  # set by CogVideoXVAE.fuse_norms
        self.frame_slice: int | None = None  # likewise, for norm_out -> conv_out (at full resolution)

    def forward(self, z: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        h = self.conv_in(z, cache)
        h = self.mid_block(h, cache, zq=z)
        # Layer by layer, not through a block's forward, whose frame would hold the block's input through all of its
        # layers: the last block's input is the 2x upsampled feature map, 1.5 GiB per chunk in the 5B decode.
        for i, block in enumerate(self.up_blocks):
            for resnet in block.resnets:
                h = resnet(h, cache, z)
            if block.upsamplers is not None:
                # A sliced next block (the full-resolution one) computes the upsampled frames slice by slice.
                # It works channels-last (see fused_norm_conv): converting this input once at quarter resolution
                # makes every upsampled slice and its conv channels-last too.
                lazy = self.up_blocks[i + 1].resnets[0].sliced
                if lazy:
                    h = Upsampled(block.upsamplers[0], h.contiguous(memory_format=torch.channels_last_3d))
                else:
                    h = block.upsamplers[0](h)
        if self.fuse is not None:
            return fused_norm_conv(self.fuse, self.norm_out, self.conv_out, h, z, cache, self.frame_slice)
        return self.conv_out(F.silu(self.norm_out(h, z, cache)), cache)


# ------------------------------------------------------------------------------------------------------ posterior


@dataclass
class DiagonalGaussian:
    """The encoder's posterior, per latent element."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(-30.0, 20.0))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Draw on the generator's device and move, as diffusers does: a CPU generator gives the same latents anywhere.
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(posterior || N(0, I)) per batch element, summed over channels, frames, height and width."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(dim=1)


# ------------------------------------------------------------------------------------------------------------ model


def _blend_into(prev: torch.Tensor, cur: torch.Tensor, extent: int, dim: int) -> None:
    """Linearly cross-fade the first `extent` rows of `cur` (along `dim`) from `prev`'s last rows, in place."""
    extent = min(prev.shape[dim], cur.shape[dim], extent)
    if extent == 0:
        return
    # Weights in float64 then cast, so they round exactly like diffusers' Python-float weights.
    w = torch.arange(extent, dtype=torch.float64, device=cur.device) / extent
    shape = [1] * cur.ndim
    shape[dim] = extent
    w_cur, w_prev = w.to(cur.dtype).view(shape), (1 - w).to(cur.dtype).view(shape)
    head = cur.narrow(dim, 0, extent)
    head.copy_(prev.narrow(dim, prev.shape[dim] - extent, extent) * w_prev + head * w_cur)


class CogVideoXVAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder3D(config)
        self.decoder = Decoder3D(config)
        # Tiling defaults as diffusers: tiles of half the training resolution, overlap tuned by CogVideoX for 480x720.
        self.use_tiling = False
        self.tile_sample_min_height = config.sample_height // 2
        self.tile_sample_min_width = config.sample_width // 2
        self.tile_overlap_factor_height = 1 / 6
        self.tile_overlap_factor_width = 1 / 5
        # How tiles are run: None runs them one after another here; vidfusion.parallel.split_vae_tiles sets a
        # function that runs each on one rank and shares the results, map_tiles(fn, tiles) -> outputs in order.
        self.map_tiles: Callable[[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]], list[torch.Tensor]] \
            | None = None

    # -- tiling switches (same parameters as diffusers' enable_tiling)

    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_overlap_factor_height: float | None = None,
        tile_overlap_factor_width: float | None = None,
    ) -> None:
        """Encode/decode frames larger than a tile in overlapping spatial tiles; None keeps the current value."""
        self.use_tiling = True
        self.tile_sample_min_height = tile_sample_min_height or self.tile_sample_min_height
        self.tile_sample_min_width = tile_sample_min_width or self.tile_sample_min_width
        self.tile_overlap_factor_height = tile_overlap_factor_height or self.tile_overlap_factor_height
        self.tile_overlap_factor_width = tile_overlap_factor_width or self.tile_overlap_factor_width

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def fuse_norms(self, enabled: bool = True, compile: bool = True, frame_slice: int | None = None) -> None:
        """Run every norm -> SiLU -> causal conv through `norm_silu_pad`, compiled by default (inference speed).

        Statistics come from `group_norm_stats` (eager reductions that fill the GPU, where F.group_norm's took 35%
        of the eager 5B decode on an H100); the pointwise rest is compiled. Upsamplers fold their nearest 2x into
        their conv (`Upsample3D.frames`). The result equals the unfused path
        within bf16 rounding (fp32 inside, one rounding at the end instead of one per op). Measured speed and
        memory: benchmarks/bench_vae_decode.py and docs/inference.md. `compile=False` runs the same functions
        eagerly (for tests and debugging).

        `frame_slice=n` (inference memory) runs the full-resolution level on slices of n frames inside each time
        chunk: the decoder's last up block (its fused convs and skips), the upsampler feeding it and the output
        norm -> conv, and the encoder's first down block's resnets. A sliced layer holds its input and output but not
        its full-size temporaries, and the upsampler's output is not held at all: the block's first resnet recomputes
        its slices for norm1's statistics, conv1 and the skip (`Upsampled`). GroupNorm statistics still pool the
        whole chunk and causal convs carry their past from slice to slice, so the result is the unsliced one up to
        float reassociation. Resnets write their second conv over its input, which autograd would need, so they do
        not when that input requires grad.

        Only that level, because only it sets the peak. In the 5B decode on an H100 (bf16, 49 x 480 x 720, n = 1),
        the upsample into it plus its first resnet peaked at 5.49 GiB sliced against 9.25 GiB unsliced, while no
        lower level passed 5.46 GiB unsliced (the 240 x 360 resnets: the floor of this scheme). With every level
        sliced, the decode took 1.66-1.88 s against 1.05 s unsliced: small slices at low resolution are
        launch-bound, and their upsamplers were recomputed too. The encoder's other full-resolution layers (conv_in
        and the first downsampler) run unsliced.
        """
        if frame_slice is not None and frame_slice < 1:
            raise VidFusionError(f"frame_slice={frame_slice} is not a frame count; use a positive one (e.g. 2) or None")
        fuse = None
        if enabled and compile:
            # Static shapes: with dynamic ones inductor's kernels for the resize indexing ran 2x slower than eager
            # (H100, 5B decode). That is one graph per layer shape (~20 for the 5B decoder, 35 s of compiling), more
            # than dynamo's default limit of 8 per function, past which it silently falls back to eager. Slices
            # (whose strides differ between chunk lengths, and dynamo specialises on strides too) add a few: 12 -> 14
            # input layouts in the 5B decode of 13 latents, slices of 1 or 2. 5B-sized tiles multiply them by 4.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
            fuse = torch.compile(norm_silu_pad, dynamic=False)
        elif enabled:
            fuse = norm_silu_pad
        for module in self.modules():
            if isinstance(module, Upsample3D):
                module.transposed = enabled
            if isinstance(module, (ResnetBlock3D, Encoder3D, Decoder3D)):
                module.fuse = fuse
            if isinstance(module, (ResnetBlock3D, Decoder3D)):
                module.frame_slice = None
        if enabled and frame_slice is not None:
            # The full-resolution level only (see above).
            for module in (*self.encoder.down_blocks[0].resnets, *self.decoder.up_blocks[-1].resnets, self.decoder):
                module.frame_slice = frame_slice

    @property
    def tile_latent_min_height(self) -> int:
        return int(self.tile_sample_min_height / self.config.spatial_compression_ratio)

    @property
    def tile_latent_min_width(self) -> int:
        return int(self.tile_sample_min_width / self.config.spatial_compression_ratio)

    # -- public API

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Video [B, C_in, T, H, W] in [-1, 1], T = 4k + 1 -> posterior over [B, C_lat, k + 1, H / 8, W / 8]."""
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise VidFusionError(
                f"VAE input has shape {list(x.shape)}; pass a video tensor [B, {self.config.in_channels}, T, H, W]"
            )
        latent_num_frames(x.shape[2], self.config.temporal_compression_ratio)
        height, width = x.shape[-2:]
        if self.use_tiling and (height > self.tile_sample_min_height or width > self.tile_sample_min_width):
            moments = self._tiled(
                x, self._encode_frames,
                tile_in=(self.tile_sample_min_height, self.tile_sample_min_width),
                tile_out=(self.tile_latent_min_height, self.tile_latent_min_width),
            )
        else:
            moments = self._encode_frames(x)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, C_lat, t, h, w] (unscaled) -> video [B, C_out, pixel_num_frames(t), 8h, 8w], about [-1, 1]."""
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise VidFusionError(
                f"VAE latents have shape {list(z.shape)}; pass [B, {self.config.latent_channels}, t, h, w] "
                f"(channels before frames)"
            )
        height, width = z.shape[-2:]
        if self.use_tiling and (height > self.tile_latent_min_height or width > self.tile_latent_min_width):
            return self._tiled(
                z, self._decode_frames,
                tile_in=(self.tile_latent_min_height, self.tile_latent_min_width),
                tile_out=(self.tile_sample_min_height, self.tile_sample_min_width),
            )
        return self._decode_frames(z)

    # -- time chunking and spatial tiling

    def _encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        cache: ConvCache = {}
        chunks = [self.encoder(x[:, :, a:b], cache) for a, b in _chunk_bounds(x.shape[2], SAMPLE_FRAMES_PER_CHUNK)]
        return torch.cat(chunks, dim=2)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        cache: ConvCache = {}
        chunks = [self.decoder(z[:, :, a:b], cache) for a, b in _chunk_bounds(z.shape[2], LATENT_FRAMES_PER_CHUNK)]
        return torch.cat(chunks, dim=2).contiguous()  # a frame-sliced decoder works channels-last

    def _tiled(
        self,
        x: torch.Tensor,
        fn: Callable[[torch.Tensor], torch.Tensor],
        tile_in: tuple[int, int],
        tile_out: tuple[int, int],
    ) -> torch.Tensor:
        """Run `fn` on overlapping tiles of x; blend each output tile into its upper and left neighbours and crop.

        Tiles start every tile_in * (1 - overlap) input pixels; outputs are blended over tile_out * overlap pixels and
        each keeps its first tile_out - blend pixels. Blending is in place, row by row, so an already-blended tile is
        what its lower and right neighbours blend from (as in diffusers)."""
        fh, fw = self.tile_overlap_factor_height, self.tile_overlap_factor_width
        stride = (int(tile_in[0] * (1 - fh)), int(tile_in[1] * (1 - fw)))
        blend = (int(tile_out[0] * fh), int(tile_out[1] * fw))
        keep = (tile_out[0] - blend[0], tile_out[1] - blend[1])
        height, width = x.shape[-2:]
        starts = [(i, j) for i in range(0, height, stride[0]) for j in range(0, width, stride[1])]
        tiles = [x[..., i : i + tile_in[0], j : j + tile_in[1]] for i, j in starts]
        outputs = [fn(t) for t in tiles] if self.map_tiles is None else self.map_tiles(fn, tiles)
        columns = len(range(0, width, stride[1]))
        rows = [outputs[r : r + columns] for r in range(0, len(outputs), columns)]
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                if i > 0:
                    _blend_into(rows[i - 1][j], tile, blend[0], dim=3)
                if j > 0:
                    _blend_into(row[j - 1], tile, blend[1], dim=4)
        return torch.cat([torch.cat([t[..., : keep[0], : keep[1]] for t in row], dim=4) for row in rows], dim=3)
