"""CogVideoX transformer: parity with diffusers' CogVideoXTransformer3DModel for every published variant, state-dict
compatibility both ways, configs and parameter counts of the full-size presets (built on the meta device)."""

import pytest

pytest.importorskip("diffusers")

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

from vidfusion.errors import VidFusionError
from vidfusion.models.transformer import (
    TRANSFORMER_PRESETS,
    CogVideoXTransformer,
    TransformerConfig,
    rope_3d,
    sincos_pos_embed_3d,
    tiny_config,
)

PRESETS = list(TRANSFORMER_PRESETS)


def diffusers_model(cfg: TransformerConfig) -> CogVideoXTransformer3DModel:
    return CogVideoXTransformer3DModel.from_config(cfg.to_dict())


def diffusers_rope(cfg: TransformerConfig, frames: int, height: int, width: int):
    """image_rotary_emb as the CogVideoX pipelines build it (their _prepare_rotary_positional_embeddings)."""
    p, pt = cfg.patch_size, cfg.patch_size_t
    gh, gw = height // p, width // p
    base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
    if pt is None:
        crop = get_resize_crop_region_for_grid((gh, gw), base_w, base_h)
        return get_3d_rotary_pos_embed(cfg.attention_head_dim, crop, (gh, gw), frames)
    return get_3d_rotary_pos_embed(
        cfg.attention_head_dim, None, (gh, gw), (frames + pt - 1) // pt, grid_type="slice", max_size=(base_h, base_w)
    )


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, including LayerNorm affines, biases and the learned position table."""
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():  # shares storage; non-persistent buffers (2B sin-cos) stay as built
        r = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
        if "norm" in name and name.endswith("weight"):
            t.copy_(1 + 0.3 * r)
        elif name.endswith("bias") or "pos_embedding" in name:
            t.copy_(0.3 * r)
        else:
            t.copy_(r / t[0].numel() ** 0.5)


# (preset, latent frames, latent height, latent width, text length). Tiny 1.0 sample grid is 3 x 4 x 6 tokens, tiny 1.5
# grid is 4 x 6 x 6: the 2B/5B cases use other sizes (sin-cos recompute, non-trivial RoPE crop), 1.5 uses odd grids.
CASES = [
    ("cogvideox-2b", 3, 8, 12, 7),
    ("cogvideox-2b", 2, 6, 10, 7),
    ("cogvideox-5b", 3, 6, 6, 5),
    ("cogvideox-5b-i2v", 3, 8, 12, 7),
    ("cogvideox1.5-5b", 4, 10, 6, 9),
    ("cogvideox1.5-5b-i2v", 2, 12, 8, 7),
]


@pytest.mark.parametrize("like,frames,height,width,text_len", CASES)
def test_matches_diffusers(like, frames, height, width, text_len):
    cfg = tiny_config(like)
    ref = diffusers_model(cfg).eval()
    randomize(ref, seed=PRESETS.index(like))
    ours = CogVideoXTransformer(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, frames, cfg.in_channels, height, width, generator=g)
    ctx = torch.randn(2, text_len, cfg.text_embed_dim, generator=g)
    t = torch.tensor([999, 37])
    ofs = torch.full((1,), 2.0) if cfg.ofs_embed_dim else None  # the I2V pipeline passes a [1] tensor of 2.0
    rope = diffusers_rope(cfg, frames, height, width) if cfg.use_rotary_positional_embeddings else None

    with torch.no_grad():
        want = ref(x, ctx, t, ofs=ofs, image_rotary_emb=rope, return_dict=False)[0]
        got = ours(x, ctx, t, ofs=ofs)
    assert got.shape == (2, frames, cfg.out_channels, height, width)
    assert want.abs().mean() > 0.1  # random weights give a non-trivial output
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("like", ["cogvideox-5b", "cogvideox1.5-5b"])
def test_rope_3d_equals_pipeline_rope(like):
    cfg = tiny_config(like)
    for frames, height, width in [(3, 8, 12), (2, 6, 10), (4, 12, 4), (6, 10, 6)]:
        cos, sin = rope_3d(cfg, frames, height, width, "cpu")
        want_cos, want_sin = diffusers_rope(cfg, frames, height, width)
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)


def test_sincos_table_equals_diffusers():
    cfg = tiny_config("cogvideox-2b")
    embed = diffusers_model(cfg).patch_embed
    for frames, height, width in [(3, 8, 12), (2, 6, 10)]:
        want = embed._get_positional_embeddings(height, width, (frames - 1) * 4 + 1)[0, cfg.max_text_seq_length :]
        assert torch.equal(sincos_pos_embed_3d(cfg, frames, height // 2, width // 2), want)


@pytest.mark.parametrize("like", PRESETS)
def test_state_dict_loads_into_diffusers(like):
    cfg = tiny_config(like)
    ours = CogVideoXTransformer(cfg)
    randomize(ours, seed=1)
    ref = diffusers_model(cfg)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ref_sd = ref.state_dict()
    assert all(torch.equal(v, ref_sd[k].to(v.dtype)) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("like", PRESETS)
def test_full_size_preset_matches_diffusers_on_meta(like):
    cfg = TRANSFORMER_PRESETS[like]
    with torch.device("meta"):
        ours = CogVideoXTransformer(cfg)
        ref = CogVideoXTransformer3DModel.from_config(cfg.to_dict())
    # Config: what diffusers built from our dict, key for key, and back.
    ref_cfg = {k: v for k, v in ref.config.items() if not k.startswith("_")}
    assert ref_cfg == {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    assert TransformerConfig.from_dict(dict(ref.config)) == cfg
    # Same names, shapes and persistence; same parameter count.
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters())
    known = {"cogvideox-2b": 1_693_783_872, "cogvideox-5b": 5_570_283_072}
    if like in known:
        assert n_ours == known[like]


def test_preset_values():
    p = TRANSFORMER_PRESETS
    assert p["cogvideox-2b"].inner_dim == 1920 and p["cogvideox-5b"].inner_dim == 3072
    assert [p[k].in_channels for k in PRESETS] == [16, 16, 32, 16, 32]
    assert [p[k].patch_size_t for k in PRESETS] == [None, None, None, 2, 2]
    assert [p[k].use_learned_positional_embeddings for k in PRESETS] == [False, False, True, False, False]
    assert [p[k].ofs_embed_dim for k in PRESETS] == [None, None, None, None, 512]
    assert (p["cogvideox1.5-5b"].sample_height, p["cogvideox1.5-5b"].sample_frames) == (300, 81)
    assert not p["cogvideox1.5-5b"].patch_bias and p["cogvideox-5b"].patch_bias


def test_config_dict_round_trip_and_errors():
    cfg = tiny_config("cogvideox1.5-5b-i2v", num_layers=3)
    assert cfg.num_layers == 3 and cfg.ofs_embed_dim == cfg.time_embed_dim and cfg.patch_size_t == 2
    d = cfg.to_dict()
    assert d["_class_name"] == "CogVideoXTransformer3DModel"
    assert TransformerConfig.from_dict({**d, "_diffusers_version": "0.42.1"}) == cfg
    with pytest.warns(UserWarning, match="num_blocks"):
        assert TransformerConfig.from_dict({**d, "num_blocks": 4}) == cfg
    with pytest.raises(VidFusionError, match="describes a UNet3DConditionModel"):
        TransformerConfig.from_dict({**d, "_class_name": "UNet3DConditionModel"})
    with pytest.raises(VidFusionError, match="multiple of 16"):
        tiny_config("cogvideox-5b", attention_head_dim=24)


def test_bad_inputs_raise_one_line_errors():
    cfg = tiny_config("cogvideox1.5-5b-i2v")
    model = CogVideoXTransformer(cfg)
    ctx = torch.randn(1, 4, cfg.text_embed_dim)
    with pytest.raises(VidFusionError, match="patch_size_t=2"):
        model(torch.randn(1, 3, cfg.in_channels, 8, 8), ctx, torch.tensor([5]), ofs=2.0)
    with pytest.raises(VidFusionError, match="needs ofs"):
        model(torch.randn(1, 2, cfg.in_channels, 8, 8), ctx, torch.tensor([5]))


def test_gradient_checkpointing_same_grads():
    cfg = tiny_config("cogvideox-5b")
    model = CogVideoXTransformer(cfg)
    randomize(model, seed=2)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 2, 4, 6, 6, generator=g), torch.randn(1, 5, cfg.text_embed_dim, generator=g)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(x, ctx, torch.tensor([500])).square().mean().backward()
        grads.append(model.transformer_blocks[0].attn1.to_q.weight.grad.clone())
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
