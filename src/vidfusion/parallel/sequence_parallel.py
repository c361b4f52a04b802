"""Ulysses sequence parallelism for CogVideoXTransformer inference.

Each rank of the sequence-parallel group holds about 1/P of the text tokens and 1/P of the video tokens (both kinds
on every rank, so the expert adaLN has its two streams everywhere). Everything in a block except attention is
token-wise and runs on the local tokens. Attention swaps the split with two all-to-alls: before it, each rank sends
head group j of its tokens to rank j and receives all tokens of its own H/P heads; after it, the reverse.

Decisions worth knowing:
- Token counts need not divide by P: ranks hold contiguous chunks of sizes differing by at most one
  (`torch.tensor_split`), and the all-to-alls carry per-rank sizes. Nothing is padded, so no attention mask is needed
  and the fast SDPA kernels stay usable (226 text tokens over 4 ranks is 57, 57, 56, 56).
- After the first all-to-all the sequence is [text_0, video_0, text_1, video_1, ...]: a permutation of the original.
  Unmasked attention is permutation-equivariant, and the second all-to-all returns each query to its owner, so the
  order never needs undoing. RoPE is applied per token before the exchange, so positions stay right.
- Inference only: the collectives are the in-place c10d ones, which carry no autograd.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange

from vidfusion.errors import VidFusionError
from vidfusion.models.transformer import CogVideoXTransformer, attention


def chunk_sizes(n: int, parts: int) -> list[int]:
    """Sizes of `torch.tensor_split(range(n), parts)`: the first n % parts chunks are one longer."""
    return [n // parts + (i < n % parts) for i in range(parts)]


class UlyssesParallel:
    """The `SequenceParallel` hooks of CogVideoXTransformer for one process group (see the module docstring)."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        # Per-rank local sequence lengths of the current forward, set by shard() and used by attention().
        self.seq_sizes: list[int] = []
        self.video_sizes: list[int] = []

    def shard(self, ctx: torch.Tensor, vid: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        text_sizes = chunk_sizes(ctx.shape[1], self.size)
        self.video_sizes = chunk_sizes(vid.shape[1], self.size)
        self.seq_sizes = [t + v for t, v in zip(text_sizes, self.video_sizes)]
        ctx = ctx.tensor_split(self.size, dim=1)[self.rank]
        vid = vid.tensor_split(self.size, dim=1)[self.rank]
        if rope is not None:
            rope = tuple(table.tensor_split(self.size, dim=0)[self.rank] for table in rope)
        return ctx, vid, rope

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and q.requires_grad:  # the c10d collectives would silently cut the backward graph
            raise VidFusionError(
                "sequence parallel is inference-only; call the model under torch.no_grad() or disable_sequence_parallel"
            )
        p, local = self.size, self.seq_sizes[self.rank]
        # Heads -> tokens: row block j of `send` is head group j of all local tokens, for rank j (q, k, v in one go).
        send = rearrange(torch.stack([q, k, v]), "three b (p h) s d -> (p s) three b h d", p=p).contiguous()
        recv = send.new_empty((sum(self.seq_sizes), *send.shape[1:]))
        dist.all_to_all_single(recv, send, self.seq_sizes, [local] * p, group=self.group)
        q, k, v = rearrange(recv, "s three b h d -> three b h s d").unbind(0)

        out = attention(q, k, v)

        # Tokens -> heads: return each rank its queries, now for all head groups.
        send = rearrange(out, "b h s d -> s b h d").contiguous()
        recv = send.new_empty((p * local, *send.shape[1:]))
        dist.all_to_all_single(recv, send, [local] * p, self.seq_sizes, group=self.group)
        return rearrange(recv, "(p s) b h d -> b (p h) s d", p=p)

    def gather(self, vid: torch.Tensor) -> torch.Tensor:
        # all_gather wants equal shapes: pad the short chunks by one token, then drop the padding.
        longest = max(self.video_sizes)
        padded = torch.nn.functional.pad(vid, (0, 0, 0, longest - vid.shape[1])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([part[:, :n] for part, n in zip(parts, self.video_sizes)], dim=1)


def enable_sequence_parallel(model: CogVideoXTransformer, group: dist.ProcessGroup | None = None) -> None:
    """Make `model(x, context, t)` run Ulysses sequence parallel over `group` (None: the default group).

    Every rank of the group must call the model with the same full inputs; each returns the full output.
    A group of size 1 switches it off.
    """
    size = dist.get_world_size(group)
    heads = model.config.num_attention_heads
    if size == 1:
        model.sequence_parallel = None
        return
    if heads % size:
        divisors = [d for d in range(2, heads + 1) if heads % d == 0]
        raise VidFusionError(
            f"num_attention_heads={heads} is not divisible by the sequence-parallel degree {size}; "
            f"use a degree in {divisors} (e.g. fewer GPUs, or put a factor 2 into CFG parallel)"
        )
    model.sequence_parallel = UlyssesParallel(group)


def disable_sequence_parallel(model: CogVideoXTransformer) -> None:
    model.sequence_parallel = None
