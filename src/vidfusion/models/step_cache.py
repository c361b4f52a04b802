"""First-block cache: an opt-in sampling approximation that skips transformer blocks 1.. on steps where they would
change little (the idea of ParaAttention's first-block cache and the TeaCache family).

Each call runs block 0 and measures how much its video residual (output minus input) moved since the last call that
ran every block: relative L1 = mean|r_t - r_ref| / mean|r_ref|. Below `threshold`, blocks 1.. are skipped and the
residual they added on that reference call (hidden after the last block minus hidden after block 0, video and text)
is added to block 0's output instead; otherwise they run and the cache is refreshed.

Decisions worth knowing:
- The reference is refreshed only on a full run, not on a skip, so a slow drift cannot pass as many small steps
  below the threshold.
- The state is keyed on the latent and token shapes, dtype and device: a new batch size or resolution starts over. Call
  `reset()` before each generation, so one video never reuses another's residuals (it also zeroes the counters).
- The skip decision is a host-side branch on a scalar (a device sync per call); with torch.compile, compile the
  blocks rather than the whole forward.
- Inference only: residuals are stored detached, and skipped blocks get no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class FirstBlockCache:
    """Set as `CogVideoXTransformer.step_cache` to enable; `threshold` 0 never skips. `hits` / `calls` count skips
    and forward calls since the last `reset()`."""

    threshold: float
    hits: int = 0
    calls: int = 0
    _key: tuple | None = field(default=None, init=False, repr=False)
    _first_residual: torch.Tensor | None = field(default=None, init=False, repr=False)
    _vid_residual: torch.Tensor | None = field(default=None, init=False, repr=False)
    _ctx_residual: torch.Tensor | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        """Forget the cached residuals and zero the counters (call before each generation)."""
        self.hits = self.calls = 0
        self._reset_state(None)

    def run(
        self,
        shape: tuple[int, ...],
        blocks: Sequence[nn.Module],
        vid: torch.Tensor,
        ctx: torch.Tensor,
        *block_args: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`block(vid, ctx, *block_args)` for every block, or block 0 plus the cached residual of the others.

        `shape` is the latent's: token counts alone do not tell an 8x12 grid from a 12x8 one.
        """
        self.calls += 1
        key = (tuple(shape), tuple(vid.shape), tuple(ctx.shape), vid.dtype, vid.device)
        if key != self._key:
            self._reset_state(key)

        vid0, ctx0 = blocks[0](vid, ctx, *block_args)
        first_residual = (vid0 - vid).detach()
        if self._can_skip(first_residual):
            self.hits += 1
            return vid0 + self._vid_residual, ctx0 + self._ctx_residual

        vid, ctx = vid0, ctx0
        for block in blocks[1:]:
            vid, ctx = block(vid, ctx, *block_args)
        self._first_residual = first_residual
        self._vid_residual, self._ctx_residual = (vid - vid0).detach(), (ctx - ctx0).detach()
        return vid, ctx

    def _reset_state(self, key: tuple | None) -> None:
        self._key = key
        self._first_residual = self._vid_residual = self._ctx_residual = None

    def _can_skip(self, first_residual: torch.Tensor) -> bool:
        prev = self._first_residual
        if prev is None:
            return False
        # In fp32 so bf16 residuals do not round the ratio; a zero reference gives inf/nan, which never skips.
        change = (first_residual.float() - prev.float()).abs().mean() / prev.float().abs().mean()
        return bool(change < self.threshold)
