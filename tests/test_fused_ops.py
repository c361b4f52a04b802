"""Fused ops of the transformer against their unfused forms (max abs difference <= 1e-6 in fp32 on O(1) values),
the attention backend setting, and a graph-break-free torch.compile(fullgraph=True) of the whole forward."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidfusion.errors import VidFusionError
from vidfusion.models.transformer import (
    CogVideoXTransformer,
    apply_rope,
    gelu_tanh_mlp,
    get_attention_backend,
    layer_norm_modulate,
    qk_norm_rope,
    qkv_projection,
    rope_3d,
    set_attention_backend,
    tiny_config,
    with_text_identity,
)

EXACT = 1e-6


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return (a - b).abs().max().item()


@torch.no_grad()
def randomize(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for name, t in module.state_dict().items():
        r = torch.randn(t.shape, generator=g)
        if "norm" in name and name.endswith("weight"):
            t.copy_(1 + 0.3 * r)
        elif name.endswith("bias"):
            t.copy_(0.3 * r)
        else:
            t.copy_(r / t[0].numel() ** 0.5)
    return module


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_layer_norm_modulate():
    norm = randomize(nn.LayerNorm(32, eps=1e-5), 0)
    x, shift, scale = rand(2, 9, 32, seed=1), rand(2, 1, 32, seed=2), rand(2, 1, 32, seed=3)
    with torch.no_grad():
        assert max_diff(layer_norm_modulate(x, norm, shift, scale), norm(x) * (1 + scale) + shift) <= EXACT


@pytest.mark.parametrize("bias", [True, False])
def test_qkv_projection_is_three_linears(bias):
    heads, hd = 3, 16
    lins = [randomize(nn.Linear(40, heads * hd, bias=bias), s) for s in range(3)]
    h = rand(2, 11, 40, seed=4)
    with torch.no_grad():
        got = qkv_projection(h, *lins, heads)
        want = [rearrange(lin(h), "b s (n d) -> b n s d", n=heads) for lin in lins]
    assert all(max_diff(g, w) <= EXACT for g, w in zip(got, want))


def test_qk_norm_rope_equals_norm_then_rope_on_video_only():
    cfg = tiny_config("cogvideox-5b")
    n_text, hd = 5, cfg.attention_head_dim
    cos, sin = rope_3d(cfg, 3, 8, 12)  # 72 video tokens
    norm_q, norm_k = randomize(nn.LayerNorm(hd, eps=1e-6), 5), randomize(nn.LayerNorm(hd, eps=1e-6), 6)
    q, k = rand(2, 2, n_text + 72, hd, seed=7), rand(2, 2, n_text + 72, hd, seed=8)
    with torch.no_grad():
        got_q, got_k = qk_norm_rope(q, k, norm_q, norm_k, with_text_identity((cos, sin), n_text))
        for got, x, norm in ((got_q, q, norm_q), (got_k, k, norm_k)):
            x = norm(x)
            want = torch.cat([x[:, :, :n_text], apply_rope(x[:, :, n_text:], cos, sin)], dim=2)
            assert max_diff(got, want) <= EXACT
        # Without RoPE (2B) it is just the two norms.
        got_q, _ = qk_norm_rope(q, k, norm_q, norm_k, None)
        assert torch.equal(got_q, norm_q(q))


def test_text_identity_rotation_is_exact_in_bf16():
    cfg = tiny_config("cogvideox-5b")
    cos, sin = with_text_identity(rope_3d(cfg, 3, 8, 12), 5)
    x = rand(1, 2, 5 + 72, cfg.attention_head_dim, seed=9).bfloat16()
    assert torch.equal(apply_rope(x, cos, sin)[:, :, :5], x[:, :, :5])


def test_gelu_tanh_mlp():
    fc1, fc2 = randomize(nn.Linear(32, 128), 10), randomize(nn.Linear(128, 32), 11)
    x = rand(2, 9, 32, seed=12)
    with torch.no_grad():
        assert max_diff(gelu_tanh_mlp(x, fc1, fc2), fc2(F.gelu(fc1(x), approximate="tanh"))) <= EXACT


def test_checkpoint_keys_unfused_and_weight_updates_seen():
    model = randomize(CogVideoXTransformer(tiny_config("cogvideox-5b")), 13).eval()
    keys = set(model.state_dict())
    assert {"transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.attn1.to_v.bias"} <= keys
    assert not any("qkv" in k for k in keys)
    x, ctx, t = rand(1, 3, 4, 8, 12, seed=14), rand(1, 7, 20, seed=15), torch.tensor([500])
    with torch.no_grad():
        before = model(x, ctx, t)
        other = randomize(CogVideoXTransformer(tiny_config("cogvideox-5b")), 16)
        model.load_state_dict(other.state_dict())  # in-place copies: no stale fused weight may survive
        after = model(x, ctx, t)
        assert (after - before).abs().max() > 0.1 and torch.equal(after, other.eval()(x, ctx, t))


def test_attention_backend_math_matches_default_and_bad_name():
    model = randomize(CogVideoXTransformer(tiny_config("cogvideox-5b")), 17).eval()
    x, ctx, t = rand(2, 3, 4, 8, 12, seed=18), rand(2, 7, 20, seed=19), torch.tensor([900, 40])
    assert get_attention_backend() == "auto"
    try:
        with torch.no_grad():
            want = model(x, ctx, t)
            set_attention_backend("math")
            got = model(x, ctx, t)
        assert want.abs().mean() > 0.1 and max_diff(got, want) <= 1e-5 * want.abs().max().item()
        with pytest.raises(VidFusionError, match="unknown attention backend 'fast'; use one of auto, cudnn"):
            set_attention_backend("fast")
        assert get_attention_backend() == "math"
        set_attention_backend("efficient")  # the choice reaches SDPA: there is no memory-efficient kernel on CPU
        with pytest.raises(RuntimeError, match="No viable backend"), torch.no_grad():
            model(x, ctx, t)
    finally:
        set_attention_backend("auto")


@pytest.mark.parametrize("like,backend", [("cogvideox-2b", "auto"), ("cogvideox-5b", "math")])
def test_compile_fullgraph_has_no_graph_breaks(like, backend):
    """fullgraph=True raises on any graph break. aot_eager traces the forward as inductor would (same Dynamo capture
    and AOT tracing) but skips code generation, which takes ~35 s on this CPU; the inductor kernels are not run here."""
    model = randomize(CogVideoXTransformer(tiny_config(like)), 20).eval()
    x, ctx, t = rand(2, 3, 4, 8, 12, seed=21), rand(2, 7, 20, seed=22), torch.tensor([900, 40])
    torch._dynamo.reset()
    set_attention_backend(backend)
    try:
        with torch.no_grad():
            want = model(x, ctx, t)
            got = torch.compile(model, fullgraph=True, backend="aot_eager")(x, ctx, t)
    finally:
        set_attention_backend("auto")
    assert want.abs().mean() > 0.1 and max_diff(got, want) <= EXACT


def bshd_attention(q, k, v):
    """An independent stand-in for FlashAttention's CuTe kernel with its contract: [B, S, heads, D] tensors of any
    strides with a unit last one, returning (out [B, S, heads, D], lse)."""
    assert q.ndim == 4 and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v), None


def test_flash_cute_backend_layout_and_missing_install(monkeypatch):
    from vidfusion.models import flash_cute

    # Not installed on the CPU machine: the choice fails at once and names the fix; the old choice stays.
    monkeypatch.setattr(flash_cute, "_kernel", None)
    monkeypatch.setitem(__import__("sys").modules, "flash_attn.cute", None)
    with pytest.raises(VidFusionError, match="nvidia-cutlass-dsl==4.1.0 and cuda-python 12.x"):
        set_attention_backend("flash-cute")
    assert get_attention_backend() == "auto"

    model = randomize(CogVideoXTransformer(tiny_config("cogvideox-5b")), 23).eval()
    x, ctx, t = rand(2, 3, 4, 8, 12, seed=24), rand(2, 7, 20, seed=25), torch.tensor([900, 40])
    flash_cute.set_kernel(bshd_attention)
    try:
        with torch.no_grad():
            want = model(x, ctx, t)
            set_attention_backend("flash-cute")
            got = model(x, ctx, t)
            torch._dynamo.reset()
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x, ctx, t)  # the custom op traces
    finally:
        set_attention_backend("auto")
        flash_cute.set_kernel(None)
    assert want.abs().mean() > 0.1
    assert max_diff(got, want) <= 1e-5 * want.abs().max().item()
    assert max_diff(compiled, want) <= 1e-5 * want.abs().max().item()


def test_flash_cute_refuses_cpu_tensors():
    from vidfusion.models import flash_cute

    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(VidFusionError, match="runs on CUDA in bf16 or fp16, not cpu float32"):
        flash_cute.attention(q, q, q)
