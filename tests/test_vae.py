"""CogVideoX VAE: weight names, config keys and numbers against diffusers' AutoencoderKLCogVideoX (fp32, CPU)."""

import collections
import dataclasses
import inspect

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLCogVideoX  # noqa: E402

import vidfusion.models.vae as vae_module  # noqa: E402
from vidfusion.errors import VidFusionError  # noqa: E402
from vidfusion.models.vae import (  # noqa: E402
    VAE_PRESETS,
    CogVideoXVAE,
    VAEConfig,
    latent_num_frames,
    pixel_num_frames,
    tiny_random_config,
)

TOL = 1e-4
# Small tiles so that tiling triggers on small inputs; 1/4 overlap so that the blend bands are several pixels wide.
TILING = dict(tile_sample_min_height=64, tile_sample_min_width=64, tile_overlap_factor_height=0.25,
              tile_overlap_factor_width=0.25)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def pair() -> tuple[AutoencoderKLCogVideoX, CogVideoXVAE]:
    """A randomly initialised diffusers VAE (norm affines randomised too) and ours holding the same weights."""
    torch.manual_seed(0)
    config = tiny_random_config()
    ref = AutoencoderKLCogVideoX.from_config(config.to_dict()).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
    ours = CogVideoXVAE(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _video(frames: int, height: int = 32, width: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------------ weights and configs


@pytest.mark.parametrize("config", [tiny_random_config(), VAE_PRESETS["tiny"]], ids=["random", "tiny"])
def test_state_dict_matches_diffusers_both_ways(config):
    torch.manual_seed(0)
    ref = AutoencoderKLCogVideoX.from_config(config.to_dict())
    ours = CogVideoXVAE(config)
    assert _shapes(ours) == _shapes(ref)
    assert not list(ours.buffers())  # diffusers has none either; a stray buffer would break strict loading
    ours.load_state_dict(ref.state_dict(), strict=True)
    torch.manual_seed(1)
    ref2 = AutoencoderKLCogVideoX.from_config(config.to_dict())
    ref2.load_state_dict(ours.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ref2.state_dict()[k], v), k


def test_published_layout_matches_diffusers():
    config = VAE_PRESETS["cogvideox-2b"]
    with torch.device("meta"):
        ref = AutoencoderKLCogVideoX.from_config(config.to_dict())
        ours = CogVideoXVAE(config)
    assert _shapes(ours) == _shapes(ref)
    assert sum(p.numel() for p in ours.parameters()) == 215_583_907


def test_config_keys_are_diffusers_init_arguments():
    params = set(inspect.signature(AutoencoderKLCogVideoX.__init__).parameters) - {"self"}
    # decoder_block_out_channels is our one extension (a wider decoder for the shipped tiny VAE); unset, it is omitted
    # from config.json, so standard configs stay diffusers' exactly.
    assert {f.name for f in dataclasses.fields(VAEConfig)} - {"decoder_block_out_channels"} == params
    # Our defaults are diffusers' defaults.
    defaults = {k: p.default for k, p in inspect.signature(AutoencoderKLCogVideoX.__init__).parameters.items()
                if k != "self"}
    assert VAEConfig() == VAEConfig.from_dict(defaults)


@pytest.mark.parametrize("name", sorted(VAE_PRESETS))
def test_config_round_trip(name):
    config = VAE_PRESETS[name]
    d = config.to_dict()
    assert d["_class_name"] == "AutoencoderKLCogVideoX"
    assert VAEConfig.from_dict(d) == config
    # diffusers reads our dict and writes one we read back to the same config.
    with torch.device("meta"):
        ref = AutoencoderKLCogVideoX.from_config(d)
    assert VAEConfig.from_dict(dict(ref.config)) == config
    assert ref.config.scaling_factor == config.scaling_factor


def test_preset_scaling_factors():
    assert VAE_PRESETS["cogvideox-2b"].scaling_factor == 1.15258426
    assert VAE_PRESETS["cogvideox-5b"].scaling_factor == 0.7


def test_from_dict_warns_on_unknown_keys_and_refuses_other_classes():
    d = {**tiny_random_config().to_dict(), "_diffusers_version": "0.42.1", "_name_or_path": "x"}
    assert VAEConfig.from_dict(d) == tiny_random_config()
    with pytest.warns(UserWarning, match="mid_block_add_attention"):
        assert VAEConfig.from_dict({**d, "mid_block_add_attention": True}) == tiny_random_config()
    with pytest.raises(VidFusionError, match="describes a AutoencoderKL,"):
        VAEConfig.from_dict({**d, "_class_name": "AutoencoderKL"})


# ------------------------------------------------------------------------------------------------ frame counts


def test_frame_count_helpers():
    assert latent_num_frames(49) == 13 and latent_num_frames(81) == 21 and latent_num_frames(1) == 1
    assert pixel_num_frames(13) == 49 and pixel_num_frames(21) == 81 and pixel_num_frames(1) == 1
    assert pixel_num_frames(2) == 8  # even latent counts decode as whole 2-latent chunks


def test_frame_count_error_names_nearest_valid_counts(pair):
    _, ours = pair
    with pytest.raises(VidFusionError, match=r"num_frames=50 .*use 49 or 53$"):
        ours.encode(torch.zeros(1, 3, 50, 16, 16))
    with pytest.raises(VidFusionError, match=r"use 53 or 49$"):
        latent_num_frames(52)
    with pytest.raises(VidFusionError, match=r"use 1 or 5$"):
        latent_num_frames(2)


# ------------------------------------------------------------------------------------------- numerical parity


@torch.no_grad()
def test_encode_matches_diffusers_in_chunks(pair):
    ref, ours = pair
    for frames in (1, 13, 25):  # 25 frames run as chunks of 9, 8, 8; 13 as one chunk
        x = _video(frames)
        want = ref.encode(x).latent_dist
        got = ours.encode(x)
        assert got.mean.shape == (1, 4, latent_num_frames(frames), 4, 4)
        assert _max_diff(got.mean, want.mean) < TOL
        assert _max_diff(got.logvar, want.logvar) < TOL
        assert _max_diff(got.kl(), want.kl().sum(-1)) < TOL * want.kl().abs().sum()  # theirs leaves W unsummed
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert _max_diff(got.sample(g1), want.sample(g2)) < TOL


@torch.no_grad()
def test_decode_matches_diffusers_in_chunks(pair):
    ref, ours = pair
    for latents in (1, 2, 7):  # 7 latents run as chunks of 3, 2, 2 with the caches carried
        z = torch.randn(1, 4, latents, 4, 4, generator=torch.Generator().manual_seed(latents))
        want = ref.decode(z).sample
        got = ours.decode(z)
        assert got.shape == (1, 3, pixel_num_frames(latents), 32, 32)
        assert _max_diff(got, want) < TOL


@torch.no_grad()
def test_tiled_encode_and_decode_match_diffusers(pair):
    ref, ours = pair
    x = _video(17, height=96, width=112)  # 2 x 3 tiles of 64 px every 48 px
    z = torch.randn(1, 4, 5, 12, 14, generator=torch.Generator().manual_seed(5))  # 2 x 3 latent tiles, chunks 3 + 2
    plain_mean, plain_video = ours.encode(x).mean, ours.decode(z)
    ref.enable_tiling(**TILING)
    ours.enable_tiling(**TILING)
    try:
        want_post, want_video = ref.encode(x).latent_dist, ref.decode(z).sample
        got_post, got_video = ours.encode(x), ours.decode(z)
    finally:
        ref.disable_tiling()
        ours.disable_tiling()
    assert _max_diff(got_post.mean, want_post.mean) < TOL
    assert _max_diff(got_post.logvar, want_post.logvar) < TOL
    assert _max_diff(got_video, want_video) < TOL
    # Tiling really ran: tiles see less context, so the results differ from untiled ones.
    assert _max_diff(got_post.mean, plain_mean) > 1e-3
    assert _max_diff(got_video, plain_video) > 1e-3


def test_posterior_matches_diffusers_including_logvar_clamp():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = torch.randn(2, 8, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * 40  # beyond [-30, 20]
    want, got = DiagonalGaussianDistribution(moments), vae_module.DiagonalGaussian.from_moments(moments)
    assert got.logvar.min() == -30 and got.logvar.max() == 20
    for a, b in ((got.mean, want.mean), (got.logvar, want.logvar), (got.std, want.std), (got.mode(), want.mode())):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_tiling_defaults_match_diffusers():
    config = VAE_PRESETS["cogvideox-2b"]
    with torch.device("meta"):
        ref, ours = AutoencoderKLCogVideoX.from_config(config.to_dict()), CogVideoXVAE(config)
    names = ("tile_sample_min_height", "tile_sample_min_width", "tile_latent_min_height", "tile_latent_min_width",
             "tile_overlap_factor_height", "tile_overlap_factor_width")
    assert [getattr(ours, n) for n in names] == [getattr(ref, n) for n in names] == [240, 360, 30, 45, 1 / 6, 1 / 5]
    ref.enable_tiling(tile_sample_min_height=96)
    ours.enable_tiling(tile_sample_min_height=96)
    assert [getattr(ours, n) for n in names] == [getattr(ref, n) for n in names]
    assert ours.use_tiling


# ------------------------------------------------------------------------------------------------- properties


@torch.no_grad()
def test_encoder_is_causal_at_chunk_boundaries(pair):
    """The first 8k + 1 frames are exactly the first time chunks of a longer video, with the same carried caches, so
    their latents must agree up to float noise only: we allow 1e-6, though on CPU they are bitwise equal. Inside a
    chunk GroupNorm pools statistics over all of its frames, so shorter prefixes do not have this property."""
    _, ours = pair
    long = _video(25)
    other = long.clone()
    other[:, :, 17:] = _video(8, seed=7)  # later frames differ
    full = ours.encode(other).mode()
    for frames in (9, 17):
        prefix = ours.encode(long[:, :, :frames]).mode()
        assert _max_diff(prefix, full[:, :, : latent_num_frames(frames)]) < 1e-6
    assert _max_diff(ours.encode(long).mode()[:, :, 5:], full[:, :, 5:]) > 1e-3  # the changed frames do matter
    assert _max_diff(ours.encode(long[:, :, :5]).mode(), full[:, :, :2]) > 1e-3  # 5 frames is mid-chunk


def test_huge_conv_inputs_are_split_in_time_without_changing_results(monkeypatch):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=(0, 1, 1))
    x = torch.randn(1, 2, 11, 5, 5)
    want = conv(x)
    monkeypatch.setattr(vae_module, "MAX_CONV_ELEMENTS", x.numel() // 3)
    torch.testing.assert_close(vae_module._conv3d_in_time_parts(conv, x), want, atol=1e-6, rtol=0)


def test_decoder_widths_extension_stays_out_of_standard_configs():
    from vidfusion.models.vae import VAE_PRESETS, VAEConfig

    assert "decoder_block_out_channels" not in VAE_PRESETS["cogvideox-5b"].to_dict()
    wide = VAEConfig(block_out_channels=(8, 16), decoder_block_out_channels=[16, 32], latent_channels=4,
                     norm_num_groups=4, temporal_compression_ratio=2, down_block_types=("CogVideoXDownBlock3D",) * 2,
                     up_block_types=("CogVideoXUpBlock3D",) * 2)
    assert VAEConfig.from_dict(wide.to_dict()) == wide and wide.decoder_channels == (16, 32)
    with pytest.raises(VidFusionError, match="one width per level"):
        VAEConfig(decoder_block_out_channels=(64, 64))


@torch.no_grad()
def test_fused_norms_equal_the_module_path(pair):
    """fuse_norms routes every norm -> SiLU -> causal conv through norm_silu_pad (compiled on the GPU); run eagerly
    here, encode and decode must equal the unfused modules, across chunk borders (carried conv caches) and in
    tiles."""
    _, ours = pair
    x = _video(17, height=32, width=48)
    z = torch.randn(1, 4, 7, 4, 6, generator=torch.Generator().manual_seed(3))
    want_moments, want_video = ours.encode(x).mean, ours.decode(z)
    ours.enable_tiling(**TILING)
    want_tiled = ours.decode(torch.randn(1, 4, 3, 12, 14, generator=torch.Generator().manual_seed(4)))
    try:
        ours.fuse_norms(compile=False)
        got_tiled = ours.decode(torch.randn(1, 4, 3, 12, 14, generator=torch.Generator().manual_seed(4)))
        ours.disable_tiling()
        got_moments, got_video = ours.encode(x).mean, ours.decode(z)
    finally:
        ours.fuse_norms(enabled=False)
        ours.disable_tiling()
    assert _max_diff(got_moments, want_moments) < TOL
    assert _max_diff(got_video, want_video) < TOL
    assert _max_diff(got_tiled, want_tiled) < TOL
    assert all(m.fuse is None for m in ours.modules() if hasattr(m, "fuse"))



@torch.no_grad()
@pytest.mark.parametrize("frame_slice", [1, 2, 3])
def test_frame_sliced_fused_norms_equal_the_unsliced_path(pair, frame_slice):
    """fuse_norms(frame_slice=n) runs the full-resolution fused convs and resnet skips on n-frame slices of each time
    chunk, with chunk-wide GroupNorm statistics and the causal convs' past carried from slice to slice; the last
    upsampler's output is recomputed slice by slice by the next resnet (16 -> 8 channels, a projected skip). Decode
    (7 latents: chunks of 3, 2, 2 latents, 9, 8, 8 frames at full resolution, spatial norms throughout), encode
    (17 frames: 9 + 8) and a tiled decode must equal the unsliced fused path and the module path."""
    _, ours = pair
    x = _video(17, height=32, width=48)
    z = torch.randn(1, 4, 7, 4, 6, generator=torch.Generator().manual_seed(3))
    z_tiled = torch.randn(1, 4, 5, 12, 14, generator=torch.Generator().manual_seed(4))  # 2 x 3 tiles, chunks 3 + 2

    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ours.enable_tiling(**TILING)
        tiled = ours.decode(z_tiled)
        ours.disable_tiling()
        return ours.encode(x).mean, ours.decode(z), tiled

    try:
        module_path = run()
        ours.fuse_norms(compile=False)
        fused = run()
        ours.fuse_norms(compile=False, frame_slice=frame_slice)
        sliced = run()
    finally:
        ours.fuse_norms(enabled=False)
        ours.disable_tiling()
    for got, want_fused, want_module in zip(sliced, fused, module_path, strict=True):
        assert _max_diff(got, want_fused) < 1e-5
        assert _max_diff(got, want_module) < TOL
    assert all(getattr(m, "frame_slice", None) is None for m in ours.modules())


@torch.no_grad()
def test_frame_slice_applies_to_the_full_resolution_level_only(pair):
    """Only the full-resolution level is sliced: there every fused norm sees at most n frames, while at every lower
    resolution (encoder and decoder) it sees the same whole time chunks as unsliced. 17 frames encode as chunks of
    9 + 8 at 32 x 48, 5 + 4 at 16 x 24, 3 + 2 below; 7 latents decode as 3 + 2 + 2 latents, 5 + 4 + 4 frames at
    8 x 12 and 9 + 8 + 8 from 16 x 24 up."""
    _, ours = pair
    x = _video(17, height=32, width=48)
    z = torch.randn(1, 4, 7, 4, 6, generator=torch.Generator().manual_seed(3))

    def frames_by_width(frame_slice: int | None) -> dict[int, set[int]]:
        seen = collections.defaultdict(set)

        def record(h, *args, **kwargs):
            seen[h.shape[-1]].add(h.shape[2])
            return vae_module.norm_silu_pad(h, *args, **kwargs)

        ours.fuse_norms(compile=False, frame_slice=frame_slice)
        for m in ours.modules():
            if getattr(m, "fuse", None) is not None:
                m.fuse = record
        ours.encode(x)
        ours.decode(z)
        return dict(seen)

    try:
        unsliced, sliced = frames_by_width(None), frames_by_width(2)
        names = {name for name, m in ours.named_modules() if getattr(m, "frame_slice", None) == 2}
    finally:
        ours.fuse_norms(enabled=False)
    assert unsliced == {48: {9, 8}, 24: {9, 8, 5, 4}, 12: {5, 4, 3, 2}, 6: {3, 2}}
    assert sliced == {**unsliced, 48: {1, 2}}  # 9 frames as 1 + 2 + 2 + 2 + 2, 8 as 2 + 2 + 2 + 2
    assert names == {"encoder.down_blocks.0.resnets.0", "decoder.up_blocks.3.resnets.0",
                     "decoder.up_blocks.3.resnets.1", "decoder"}


@torch.no_grad()
def test_frame_sliced_decode_upsampling_time_into_an_unprojected_skip():
    """The other Upsampled cases end to end: a last upsampler that also doubles time (temporal compression 8, so
    that output frames repeat input frames, picked by index) into a first full-resolution resnet of equal widths
    (its skip is the recomputed upsampled map itself). Chunks of 3 + 2 latents decode to 17 + 16 frames."""
    torch.manual_seed(0)
    config = tiny_random_config(temporal_compression_ratio=8, decoder_block_out_channels=(16, 16, 16, 32))
    vae = CogVideoXVAE(config).eval()
    assert vae.decoder.up_blocks[2].upsamplers[0].compress_time
    assert vae.decoder.up_blocks[3].resnets[0].conv_shortcut is None
    z = torch.randn(1, 4, 5, 4, 6, generator=torch.Generator().manual_seed(9))
    vae.fuse_norms(compile=False)
    want = vae.decode(z)
    assert want.shape == (1, 3, 33, 32, 48)
    for frame_slice in (2, 3):
        vae.fuse_norms(compile=False, frame_slice=frame_slice)
        assert _max_diff(vae.decode(z), want) < 1e-5


def test_frame_sliced_decode_keeps_gradients(pair):
    """Under autograd the sliced resnets must not write over tensors the backward pass reads."""
    _, ours = pair
    z = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(6), requires_grad=True)
    grads = []
    try:
        for frame_slice in (None, 2):
            ours.fuse_norms(compile=False, frame_slice=frame_slice)
            grads.append(torch.autograd.grad(ours.decode(z).square().sum(), z)[0])
    finally:
        ours.fuse_norms(enabled=False)
    assert grads[0].abs().max() > 0 and _max_diff(grads[1], grads[0]) < 1e-5 * grads[0].abs().max()
    with pytest.raises(VidFusionError, match=r"frame_slice=0 .* use a positive one"):
        ours.fuse_norms(compile=False, frame_slice=0)


@torch.no_grad()
@pytest.mark.parametrize("compress_time", [True, False])
def test_upsampled_slices_and_statistics_equal_the_whole_output(compress_time):
    """Upsampled computes the upsampler's output frames on demand; its frames and its GroupNorm statistics (summed
    over slices) must equal those of the whole output, for odd, even and single-frame inputs."""
    torch.manual_seed(0)
    up = vae_module.Upsample3D(8, compress_time)
    for frames in (1, 2, 3):
        x = torch.randn(1, 8, frames, 5, 6) + torch.arange(8.0).view(1, 8, 1, 1, 1)  # groups with distinct means
        want = up(x)
        lazy = vae_module.Upsampled(up, x)
        assert lazy.shape == want.shape
        slices = vae_module._frame_slices(want.shape[2], 2)
        for a, b in slices:
            assert _max_diff(lazy.frames(a, b), want[:, :, a:b]) < 1e-6
        for got, ref in zip(lazy.group_norm_stats(4, 1e-6, slices), vae_module.group_norm_stats(want, 4, 1e-6)):
            assert _max_diff(got, ref) < 1e-5 * ref.abs().max()


class _LargestStorage(TorchDispatchMode):
    """The largest storage any aten op returns: every allocation is one (views return their base's storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@torch.no_grad()
def test_frame_sliced_decode_never_makes_an_upsampled_map(pair):
    """Sliced, the last upsampler's output (16 channels x 9 frames at 32 x 48 here, 256 x 9 at 480 x 720 in the 5B
    decode) never exists whole; the largest tensor is then the last resnets' 8-channel output, or for slices of 3
    the padded 5-frame slice of that map: the unsliced lower levels' tensors (a quarter of the pixels or fewer) stay
    below both. Unsliced, it does exist."""
    _, ours = pair
    z = torch.randn(1, 4, 3, 4, 6, generator=torch.Generator().manual_seed(8))  # one chunk: 9 frames
    upsampled = 16 * 9 * 32 * 48 * 4  # bytes, fp32
    largest = {}
    try:
        for frame_slice in (None, 1, 2, 3):
            ours.fuse_norms(compile=False, frame_slice=frame_slice)
            with _LargestStorage() as mode:
                ours.decode(z)
            largest[frame_slice] = mode.largest
    finally:
        ours.fuse_norms(enabled=False)
    assert largest[None] >= upsampled
    assert largest[1] == largest[2] == upsampled // 2 and largest[3] == upsampled * 5 // 9


def test_norm_silu_pad_values():
    """The fused function against F.group_norm, the nearest-resized spatial modulation, SiLU and the time padding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 6, 4, generator=g) * 3 + 1
    weight, bias = torch.rand(8, generator=g) + 0.5, torch.randn(8, generator=g)
    scale, shift = torch.randn(2, 8, 3, 3, 2, generator=g), torch.randn(2, 8, 3, 3, 2, generator=g)
    past = torch.randn(2, 8, 2, 6, 4, generator=g)
    normed = torch.nn.functional.group_norm(x, 4, weight, bias, 1e-6)
    # 5 frames from 3 latents: frame 0 apart, then each latent frame twice; space x2 nearest
    index = torch.tensor([0, 1, 1, 2, 2])
    up = lambda t: t[:, :, index].repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # noqa: E731
    want = torch.nn.functional.silu(normed * up(scale) + up(shift))
    mean, rstd = vae_module.group_norm_stats(x, 4, 1e-6)
    grouped = x.reshape(2, 4, -1).double()
    assert torch.allclose(mean.double(), grouped.mean(-1), atol=1e-5)
    assert torch.allclose(rstd.double(), 1 / (grouped.var(-1, unbiased=False) + 1e-6).sqrt(), rtol=1e-4)
    got = vae_module.norm_silu_pad(x, mean, rstd, weight, bias, scale, shift, past, time_pad=2)
    assert got.shape == (2, 8, 7, 6, 4)
    assert _max_diff(got[:, :, 2:], want) < 1e-5
    assert torch.equal(got[:, :, :2], past)
    first = vae_module.norm_silu_pad(x, mean, rstd, weight, bias, time_pad=2)  # no past: frame 0 repeated
    assert _max_diff(first[:, :, 0], first[:, :, 2]) == 0 and _max_diff(first[:, :, 1], first[:, :, 2]) == 0
    assert _max_diff(first[:, :, 2:], torch.nn.functional.silu(normed)) < 1e-5


def test_group_norm_stats_are_the_same_in_either_layout():
    """The channels-last sums (per channel over width, then rows, then the group's channels) give the statistics of
    the contiguous path; a tensor that is both layouts at once (one channel) takes the contiguous one."""
    x = torch.randn(2, 8, 3, 5, 7, generator=torch.Generator().manual_seed(4)) * 2 + 0.5
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    assert vae_module._is_channels_last(x_cl) and not vae_module._is_channels_last(x)
    for got, want in zip(vae_module.group_norm_stats(x_cl, 4, 1e-6), vae_module.group_norm_stats(x, 4, 1e-6)):
        assert got.shape == want.shape == (2, 4)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not vae_module._is_channels_last(torch.randn(1, 1, 2, 3, 4).contiguous(memory_format=torch.channels_last_3d))


class _ConvLayouts(TorchDispatchMode):
    """(input width, input is channels-last) for every 3x3 convolution and 4x4 transposed one."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and args[1].shape[-1] in (3, 4):
            self.seen.add((args[0].shape[-1], vae_module._is_channels_last(args[0])))
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def test_frame_sliced_decode_convolves_channels_last_at_full_resolution_only(pair):
    """Sliced, every 3x3 conv at full resolution (width 48: the resnets' and the output conv) and the upsampler's
    transposed conv into it (width 24) take a channels-last input, which cuDNN runs without converting (and then
    returns channels-last, so the skip projection's input is too; the CPU's conv3d returns contiguous outputs, so
    that is not checked here). Below that nothing changes. The decoded video itself comes back contiguous."""
    _, ours = pair
    z = torch.randn(1, 4, 3, 4, 6, generator=torch.Generator().manual_seed(8))
    try:
        ours.fuse_norms(compile=False, frame_slice=2)
        with _ConvLayouts() as mode:
            out = ours.decode(z)
    finally:
        ours.fuse_norms(enabled=False)
    assert out.is_contiguous()
    assert {cl for width, cl in mode.seen if width == 48} == {True}
    assert (24, True) in mode.seen  # the transposed upsampler conv
    assert {cl for width, cl in mode.seen if width < 24} == {False}


@pytest.mark.parametrize("compress_time", [False, True])
def test_fused_upsampler_folds_nearest_2x_into_a_transposed_conv(compress_time):
    """Nearest 2x then the 3x3 conv equals the stride-2 transposed 4x4 conv with the folded weights, borders
    included (float64: only the order of the sums differs), for odd and even frame counts."""
    torch.manual_seed(0)
    up = vae_module.Upsample3D(6, compress_time).double()
    for frames in (1, 2, 3):
        x = torch.randn(2, 6, frames, 5, 7, dtype=torch.float64)
        want = up(x)
        up.transposed = True
        got = up(x)
        up.transposed = False
        assert got.shape == want.shape == (2, 6, 2 * frames - frames % 2 if compress_time and frames > 1 else frames,
                                           10, 14)
        assert _max_diff(got, want) < 1e-12
    # the folded weight is kept between calls, and rebuilt when the weight changes in place (load_state_dict)
    up.transposed = True
    with torch.no_grad():
        x = torch.randn(1, 6, 2, 5, 7, dtype=torch.float64)
        first = up(x)
        assert up._transposed_weight() is up._transposed_weight()
        up.conv.weight.mul_(2)
        bias = up.conv.bias.view(1, -1, 1, 1, 1)
        assert _max_diff(up(x) - bias, 2 * (first - bias)) < 1e-12
    # under autograd the gradient reaches the conv's weight through the fold
    up.conv.weight.grad = None
    up(x).sum().backward()
    up.transposed = False
    want_grad = torch.autograd.grad(up(x).sum(), up.conv.weight)[0]
    assert _max_diff(up.conv.weight.grad, want_grad) < 1e-9
