"""First-block step cache: off means bit-identical output, threshold 0 never skips, a hit adds exactly the cached
residual of blocks 1.., and the cache starts over on a new shape or reset()."""

import pytest
import torch

from vidfusion.errors import VidFusionError
from vidfusion.models.step_cache import FirstBlockCache
from vidfusion.models.transformer import CogVideoXTransformer, attention, tiny_config

HUGE = 1e9


def make_model(seed: int = 0) -> CogVideoXTransformer:
    torch.manual_seed(seed)
    return CogVideoXTransformer(tiny_config("cogvideox-5b", num_layers=3)).eval()


def inputs(seed: int, batch: int = 1, height: int = 8, width: int = 12, t: float = 500.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 4, height, width, generator=g)
    context = torch.randn(batch, 7, 20, generator=g)
    return x, context, torch.full((batch,), t)


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@torch.no_grad()
def test_cache_off_is_bit_identical_and_state_dict_unchanged():
    model, fresh = make_model(), make_model()
    keys = list(model.state_dict())
    model.step_cache = FirstBlockCache(HUGE)
    assert list(model.state_dict()) == keys
    model(*inputs(0))
    model.step_cache = None  # a cache used earlier leaves nothing behind
    for seed in (1, 2):
        assert torch.equal(model(*inputs(seed)), fresh(*inputs(seed)))


@torch.no_grad()
def test_threshold_zero_never_skips():
    model, reference = make_model(), make_model()
    model.step_cache = cache = FirstBlockCache(0.0)
    for seed, t in ((0, 900.0), (0, 880.0), (1, 860.0), (1, 860.0)):  # the last repeats: change 0 is not < 0
        args = inputs(seed, t=t)
        assert torch.equal(model(*args), reference(*args))
    assert (cache.hits, cache.calls) == (0, 4)


@torch.no_grad()
def test_hit_skips_later_blocks_and_reuses_their_residual():
    model = make_model()
    model.step_cache = cache = FirstBlockCache(HUGE)
    block1_calls, block2_calls = count_calls(model.transformer_blocks[1]), count_calls(model.transformer_blocks[2])
    first = model(*inputs(0))
    second = model(*inputs(0))
    assert (cache.hits, cache.calls) == (1, 2)
    assert block1_calls == block2_calls == [1]
    # Block 0 output + (last-block output - block 0 output) of the same input: the first output up to rounding.
    torch.testing.assert_close(second, first, rtol=0, atol=1e-6)
    assert not torch.equal(second, make_model()(*inputs(0, t=100.0)))  # sanity: the output depends on the input


@torch.no_grad()
def test_hit_at_new_timestep_equals_block0_plus_cached_residual():
    """Reference: the exact model with the last block's output replaced by block 0's output + the cached residual."""
    model, reference = make_model(), make_model()
    model.step_cache = FirstBlockCache(HUGE)
    block0_out, last_out = [], []
    model.transformer_blocks[0].register_forward_hook(lambda m, a, out: block0_out.append(out[0]))
    model.transformer_blocks[2].register_forward_hook(lambda m, a, out: last_out.append(out[0]))
    model(*inputs(0, t=900.0))
    residual = last_out[0] - block0_out[0]
    cached = model(*inputs(0, t=850.0))
    assert model.step_cache.hits == 1 and len(last_out) == 1
    reference.transformer_blocks[2].register_forward_hook(lambda m, a, out: (block0_out[1] + residual, out[1]))
    assert torch.equal(cached, reference(*inputs(0, t=850.0)))
    assert not torch.equal(cached, make_model()(*inputs(0, t=850.0)))  # it is an approximation


@torch.no_grad()
# 12x8 has as many tokens as 8x12: the key must see the grid, not only the token count.
@pytest.mark.parametrize("new_shape", [dict(batch=2), dict(height=12, width=8)])
def test_shape_change_starts_over(new_shape):
    model, reference = make_model(), make_model()
    model.step_cache = cache = FirstBlockCache(HUGE)
    model(*inputs(0))
    model(*inputs(0))
    assert cache.hits == 1
    args = inputs(1, **new_shape)
    assert torch.equal(model(*args), reference(*args))
    assert (cache.hits, cache.calls) == (1, 3)
    model(*inputs(0))  # back at the first shape: its residuals were dropped, so no skip either
    assert cache.hits == 1
    model(*inputs(0))
    assert cache.hits == 2


@torch.no_grad()
def test_reset_clears_residuals_and_counters():
    model, reference = make_model(), make_model()
    model.step_cache = cache = FirstBlockCache(HUGE)
    model(*inputs(0))
    model(*inputs(0))
    cache.reset()
    assert (cache.hits, cache.calls) == (0, 0)
    args = inputs(0, t=300.0)
    assert torch.equal(model(*args), reference(*args))
    assert (cache.hits, cache.calls) == (0, 1)


def test_run_caches_both_streams_and_refreshes_reference_only_on_full_runs():
    """Toy blocks: block 0 adds `step` to video; blocks 1, 2 add 10 to video and 100 to text."""
    step = [1.0]
    blocks = [lambda v, c: (v + step[0], c)] + [lambda v, c: (v + 10, c + 100)] * 2
    cache = FirstBlockCache(threshold=0.25)
    vid, ctx = torch.zeros(1, 4, 2), torch.zeros(1, 3, 2)

    out = cache.run((1, 2), blocks, vid, ctx)
    assert torch.equal(out[0], vid + 21) and torch.equal(out[1], ctx + 200)
    step[0] = 1.2  # change 0.2 < 0.25: skip; the later blocks' residuals (20, 200) are reused
    blocks[1:] = [lambda v, c: (v + 99, c + 99)] * 2  # would be visible if they ran
    out = cache.run((1, 2), blocks, vid, ctx)
    assert torch.equal(out[0], (vid + 1.2) + 20) and torch.equal(out[1], ctx + 200)
    step[0] = 1.4  # 0.2 from the last hit, but 0.4 from the last full run: run all blocks
    out = cache.run((1, 2), blocks, vid, ctx)
    assert torch.equal(out[0], vid + 1.4 + 99 + 99) and torch.equal(out[1], ctx + 198)
    assert (cache.hits, cache.calls) == (1, 3)


@torch.no_grad()
def test_refused_with_sequence_parallel():
    class NoShard:
        attention = staticmethod(attention)

        def shard(self, ctx, vid, rope):
            return ctx, vid, rope

        def gather(self, vid):
            return vid

    model = make_model()
    model.sequence_parallel = NoShard()
    out = model(*inputs(0))  # the stub works without the cache
    assert torch.equal(out, make_model()(*inputs(0)))
    model.step_cache = FirstBlockCache(0.1)
    with pytest.raises(VidFusionError, match="sequence parallel"):
        model(*inputs(0))
