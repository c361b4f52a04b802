"""FreeInit: filters against their closed forms (and diffusers' for even sizes), the frequency mix, the pass loop
with a stand-in sampler, and end to end on the shipped tiny model."""

import math

import pytest
import torch

from vidfusion.cli import SHIPPED_MODEL, main
from vidfusion.diffusion.freeinit import (
    FILTERS,
    FreeInitSettings,
    freeinit_sample,
    entry_timestep,
    low_pass_filter,
    mix_frequencies,
    pass_steps,
    renoise_timestep,
    timestep_for_alphabar,
)
from vidfusion.diffusion.prediction import add_noise
from vidfusion.diffusion.schedule import (
    COGVIDEOX_2B_SCHEDULE,
    COGVIDEOX_5B_SCHEDULE,
    alphas_cumprod,
    inference_timesteps,
)
from vidfusion.errors import VidFusionError
from vidfusion.pipelines.text_to_video import T2VRequest, text_to_video

SCHEDULE = COGVIDEOX_5B_SCHEDULE


def centred(i: int, n: int) -> float:
    """Normalised coordinate of bin i of an fftshift-ed axis of length n: DC (index n // 2) at 0, range [-1, 1)."""
    return 2 * (i - n // 2) / n


def closed_form(kind, point, shape, d_s, d_t, order=4):
    t, h, w = (centred(i, n) for i, n in zip(point, shape))
    d2 = ((d_s / d_t) * t) ** 2 + h**2 + w**2
    if kind == "gaussian":
        return math.exp(-d2 / (2 * d_s**2))
    if kind == "butterworth":
        return 1 / (1 + (d2 / d_s**2) ** order)
    if kind == "ideal":
        return float(d2 <= d_s**2)
    return float(abs(t) <= d_t and abs(h) <= d_s and abs(w) <= d_s)  # box


POINTS = [(2, 4, 3), (2, 5, 3), (3, 4, 4), (0, 0, 0), (1, 6, 2), (4, 3, 5), (2, 4, 1), (3, 2, 3)]


@pytest.mark.parametrize("kind", FILTERS)
@pytest.mark.parametrize("shape, d_s, d_t", [((5, 8, 6), 0.25, 0.25), ((4, 8, 8), 0.4, 0.6), ((5, 9, 7), 0.5, 0.3)])
def test_filter_values_equal_the_closed_form_at_sample_points(kind, shape, d_s, d_t):
    lpf = torch.fft.fftshift(low_pass_filter(shape, kind, d_s, d_t, order=3))
    assert lpf.shape == shape and lpf.dtype == torch.float32
    for point in POINTS:
        point = tuple(p % n for p, n in zip(point, shape))
        assert lpf[point].item() == pytest.approx(closed_form(kind, point, shape, d_s, d_t, order=3), abs=1e-7)
    dc = tuple(n // 2 for n in shape)
    assert lpf[dc] == 1.0  # DC passes fully, whatever the sizes (the paper's formula misses it for odd sizes)
    # Symmetric under k -> -k, so the mixed spectrum of real inputs is Hermitian (real inverse FFT).
    unshifted = low_pass_filter(shape, kind, d_s, d_t, order=3)
    mirrored = torch.roll(unshifted.flip(0, 1, 2), shifts=(1, 1, 1), dims=(0, 1, 2))  # index k -> -k mod N
    assert torch.equal(unshifted, mirrored)


def test_ideal_cuts_at_d_s_and_box_is_the_inclusive_cube():
    lpf = torch.fft.fftshift(low_pass_filter((1, 16, 16), "ideal", 0.25, 0.25))
    # Row through DC: coordinates 2 (i - 8) / 16 = 0.125 per bin; |x| <= 0.25 passes bins 6..10.
    assert lpf[0, 8].tolist() == [0.0] * 6 + [1.0] * 5 + [0.0] * 5
    box = torch.fft.fftshift(low_pass_filter((5, 16, 16), "box", 0.25, 0.4))
    # Time coordinates of 5 frames: -0.8, -0.4, 0, 0.4, 0.8; |t| <= 0.4 keeps 3. Space: half-width 2 bins.
    assert box.sum().item() == 3 * 5 * 5
    assert box[1:4, 6:11, 6:11].eq(1).all()


@pytest.mark.parametrize("kind", ["butterworth", "gaussian"])
def test_filters_equal_diffusers_for_even_sizes(kind):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    shape = (1, 4, 4, 8, 6)  # even sizes: the paper's 2t/N - 1 is exactly our coordinate
    theirs = FreeInitMixin()._get_free_init_freq_filter(shape, "cpu", kind, 4, 0.25, 0.4)[0, 0]
    ours = torch.fft.fftshift(low_pass_filter(shape[2:], kind, 0.25, 0.4, order=4))
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=1e-7)
    assert diffusers is not None


@pytest.mark.parametrize("kind", FILTERS)
def test_mixed_noise_keeps_zero_mean_and_unit_variance(kind):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(64, 5, 16, 16, 16, generator=g) for _ in range(2))  # [B, F, C, H, W], 1.3M values
    lpf = low_pass_filter((5, 16, 16), kind)
    mixed = mix_frequencies(a, b, lpf)
    assert abs(mixed.mean().item()) < 0.005
    assert mixed.var().item() == pytest.approx(1.0, abs=0.008)
    # Per frequency too: the power averaged over batch and channels is 1 in the pass band and out of it.
    power = torch.fft.fftn(mixed, dim=(1, 3, 4)).abs().pow(2).mean(dim=(0, 2)) / (5 * 16 * 16)
    assert power[lpf > 0.5].mean().item() == pytest.approx(1.0, abs=0.05)
    assert power[lpf <= 0.5].mean().item() == pytest.approx(1.0, abs=0.01)
    # The paper's weights (1 - L) lose variance L^2 + (1 - L)^2 < 1 in a smooth filter's transition band.
    paper = mix_frequencies(a, b, lpf, preserve_variance=False).var().item()
    expected = (lpf**2 + (1 - lpf) ** 2).mean().item()
    assert paper == pytest.approx(expected, abs=0.008)
    if kind == "gaussian":
        assert paper < 0.975


def test_mix_takes_low_band_from_one_input_and_high_band_from_the_other():
    g = torch.Generator().manual_seed(1)
    low, high = (torch.randn(2, 3, 5, 8, 8, generator=g) for _ in range(2))  # [B, C, F, H, W]
    lpf = low_pass_filter((5, 8, 8), "ideal", 0.5, 0.5)
    mixed = mix_frequencies(low, high, lpf, layout="bcfhw")
    spectrum = lambda x: torch.fft.fftn(x.double(), dim=(2, 3, 4))  # noqa: E731
    keep = lpf.bool()
    torch.testing.assert_close(spectrum(mixed)[..., keep], spectrum(low)[..., keep], atol=1e-4, rtol=0)
    torch.testing.assert_close(spectrum(mixed)[..., ~keep], spectrum(high)[..., ~keep], atol=1e-4, rtol=0)
    # The same mix in the other layout is the same tensor, permuted.
    other = mix_frequencies(low.transpose(1, 2), high.transpose(1, 2), lpf, layout="bfchw")
    torch.testing.assert_close(other.transpose(1, 2), mixed, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------------- the loop


class StandInSampler:
    """sample_fn that records its calls and returns a fixed function of its input (and, like DPM, draws noise)."""

    def __init__(self, target: torch.Tensor, generator: torch.Generator | None = None):
        self.target, self.generator, self.calls = target, generator, []

    def __call__(self, latents: torch.Tensor, num_steps: int, label: str, start: int | None) -> torch.Tensor:
        self.calls.append((latents.clone(), num_steps, label, start))
        extra = torch.randn(latents.shape, generator=self.generator) if self.generator is not None else 0
        return self.target + 0.1 * latents + 0.01 * extra


def smooth_latent(shape=(1, 5, 4, 16, 16)) -> torch.Tensor:
    """A clean latent with most energy at low frequencies, as VAE latents of the world's clips have."""
    g = torch.Generator().manual_seed(5)
    coarse = torch.randn(shape[0] * shape[1], shape[2], 2, 2, generator=g) * 2
    up = torch.nn.functional.interpolate(coarse, size=shape[3:], mode="bilinear", align_corners=False)
    return up.reshape(shape)


def test_one_pass_is_the_plain_sampler_and_labels_count_passes():
    noise = torch.randn(1, 5, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = StandInSampler(smooth_latent(), torch.Generator().manual_seed(3))
    free = StandInSampler(smooth_latent(), torch.Generator().manual_seed(3))
    expected = plain(noise, 30, "sampling", None)
    out = freeinit_sample(free, noise, SCHEDULE, FreeInitSettings(passes=1), 30, torch.Generator().manual_seed(9))
    assert torch.equal(out, expected)
    assert torch.equal(free.calls[0][0], noise) and free.calls[0][1:] == (30, "pass 1/1", None)

    three = StandInSampler(smooth_latent())
    freeinit_sample(three, noise, SCHEDULE, FreeInitSettings(passes=3), 30, torch.Generator().manual_seed(9))
    # Later passes enter the 30-step grid (999, 966, ..., 833, 799, ...) at its first timestep <= 820.
    assert entry_timestep(SCHEDULE, 30, 820) == 799
    assert [c[1:] for c in three.calls] == [(30, "pass 1/3", None), (30, "pass 2/3", 799), (30, "pass 3/3", 799)]
    assert torch.equal(three.calls[0][0], noise)  # pass 0 starts from the caller's noise, untouched
    c2f = StandInSampler(smooth_latent())
    freeinit_sample(c2f, noise, SCHEDULE, FreeInitSettings(passes=3, coarse_to_fine=True), 30)
    assert [c[1] for c in c2f.calls] == [10, 20, 30] == pass_steps(30, 3, True)
    assert pass_steps(4, 5, True) == [1, 1, 2, 3, 4]


@pytest.mark.parametrize("from_top", [False, True])
def test_later_passes_start_from_the_mix_of_the_renoised_result_and_fresh_noise(from_top):
    """The re-noise level is the first timestep of the pass's grid at or below the setting, and the pass starts
    there (the init is noised to exactly the level its first step assumes); from the top, as in the paper, the
    re-noise level is the setting itself and the pass runs the whole schedule."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 5, 4, 16, 16, generator=g)
    settings = FreeInitSettings(passes=2, renoise_timestep=900, start_at_renoise=not from_top)
    sampler = StandInSampler(smooth_latent())
    out = freeinit_sample(sampler, noise, SCHEDULE, settings, 7, torch.Generator().manual_seed(4))
    level = 900 if from_top else 856  # the 7-step trailing grid: 999, 856, 713, ...
    assert sampler.calls[1][3] == (None if from_top else level)
    clean0 = sampler.calls[0][0] * 0.1 + smooth_latent()
    fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed(4))
    expected_init = mix_frequencies(add_noise(alphas_cumprod(SCHEDULE), clean0, noise, level), fresh,
                                    low_pass_filter((5, 16, 16)))
    torch.testing.assert_close(sampler.calls[1][0], expected_init, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, smooth_latent() + 0.1 * expected_init)


def low_band_correlation(init: torch.Tensor, clean: torch.Tensor) -> float:
    """Cosine similarity of the two tensors' Butterworth low bands ([B, F, C, 16, 16] latents)."""
    lpf = low_pass_filter((5, 16, 16))[None, :, None]
    band = lambda x: torch.fft.ifftn(torch.fft.fftn(x, dim=(1, 3, 4)) * lpf, dim=(1, 3, 4)).real  # noqa: E731
    return torch.nn.functional.cosine_similarity(band(init).flatten(), band(clean).flatten(), dim=0).item()


def test_renoise_at_pure_noise_forgets_the_first_pass_and_the_default_level_keeps_its_low_band():
    shape = (8, 5, 4, 16, 16)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    clean = smooth_latent(shape)
    assert torch.equal(add_noise(alphas_cumprod(SCHEDULE), clean, noise, 999), noise)  # zero terminal SNR
    inits = []
    for target in (clean, -3 * clean):
        sampler = StandInSampler(target)
        freeinit_sample(sampler, noise, SCHEDULE, FreeInitSettings(passes=2, renoise_timestep=999), 5,
                        torch.Generator().manual_seed(1))
        inits.append(sampler.calls[1][0])
    # At t = 999 the second pass starts from the same noise whatever the first pass produced: plain sampling of
    # mix(n0, fresh), a new N(0, I) draw.
    assert torch.equal(inits[0], inits[1])
    assert abs(low_band_correlation(inits[0], clean)) < 0.1
    # At the default level the low band of the new init follows the first pass's result, at unit variance.
    sampler = StandInSampler(clean)
    freeinit_sample(sampler, noise, SCHEDULE, FreeInitSettings(passes=2), 5, torch.Generator().manual_seed(1))
    assert low_band_correlation(sampler.calls[1][0], clean + 0.1 * noise) > 0.4
    assert sampler.calls[1][0].std().item() == pytest.approx(1.0, abs=0.02)


def test_default_renoise_level_follows_the_schedule():
    t5, t2 = renoise_timestep(SCHEDULE, FreeInitSettings()), renoise_timestep(COGVIDEOX_2B_SCHEDULE, FreeInitSettings())
    assert 0 < alphas_cumprod(SCHEDULE)[t5] < 0.05 and t2 < t5  # 2B's SNR shift reaches the level earlier
    assert alphas_cumprod(SCHEDULE)[t5].item() == pytest.approx(alphas_cumprod(COGVIDEOX_2B_SCHEDULE)[t2].item(),
                                                                rel=0.05)
    assert renoise_timestep(SCHEDULE, FreeInitSettings(renoise_timestep=700)) == 700
    assert timestep_for_alphabar(SCHEDULE, 0.0) == 999


def test_deterministic_under_a_seed():
    noise = torch.randn(1, 5, 4, 16, 16, generator=torch.Generator().manual_seed(0))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return freeinit_sample(StandInSampler(smooth_latent(), g), noise, SCHEDULE, FreeInitSettings(passes=3), 5, g)

    assert torch.equal(run(1), run(1))
    assert (run(1) - run(2)).abs().mean() > 1e-3


@pytest.mark.parametrize("settings, message", [
    (FreeInitSettings(passes=0), "at least 1 pass"),
    (FreeInitSettings(filter="median"), "use one of butterworth"),
    (FreeInitSettings(d_s=0), "--freeinit-ds 0"),
    (FreeInitSettings(renoise_timestep=1000), "use 0 to 999"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(VidFusionError, match=message):
        freeinit_sample(StandInSampler(torch.zeros(1)), torch.zeros(1, 5, 4, 8, 8), SCHEDULE, settings, 5)


# ------------------------------------------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def shipped():
    from vidfusion.io.pretrained import load_pretrained

    return load_pretrained(SHIPPED_MODEL)


def small(prompt="a red circle moving to the right", **kw) -> T2VRequest:
    return T2VRequest(prompt, num_frames=9, height=64, width=64, num_steps=3, **kw)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_freeinit_with_one_pass_is_the_plain_pipeline_bit_for_bit(shipped, sampler):
    plain = text_to_video(shipped, small(sampler=sampler), progress=False)
    one = text_to_video(shipped, small(sampler=sampler, freeinit=FreeInitSettings(passes=1)), progress=False)
    assert torch.equal(plain, one)
    two = text_to_video(shipped, small(sampler=sampler, freeinit=FreeInitSettings(passes=2)), progress=False)
    assert (two - plain).abs().mean() > 1e-3
    assert torch.equal(two, text_to_video(shipped, small(sampler=sampler, freeinit=FreeInitSettings(passes=2)),
                                          progress=False))


def test_renoise_at_pure_noise_with_an_all_pass_filter_is_the_plain_pipeline(shipped):
    # z = n0 exactly at t = 999, and an all-pass filter keeps all of it: pass 2 redoes pass 1 (FFT rounding aside).
    plain = text_to_video(shipped, small(), progress=False)
    settings = FreeInitSettings(passes=2, filter="ideal", d_s=4.0, d_t=4.0, renoise_timestep=999)
    again = text_to_video(shipped, small(freeinit=settings), progress=False)
    torch.testing.assert_close(again, plain, atol=1e-3, rtol=0)


def test_cli_freeinit_flags(tmp_path, capsys):
    assert main(["generate", "x", "--freeinit-filter", "gaussian", "-o", str(tmp_path / "a.mp4")]) == 2
    assert "--freeinit-filter needs --freeinit N" in capsys.readouterr().err
    assert main(["generate", "x", "--freeinit", "0", "-o", str(tmp_path / "a.mp4")]) == 2
    assert "--freeinit 0 must be at least 1 pass" in capsys.readouterr().err
    out = tmp_path / "b.mp4"
    assert main(["generate", "a red circle", "--freeinit", "2", "--freeinit-filter", "box", "--freeinit-renoise",
                 "850", "--steps", "1", "--frames", "5", "--height", "32", "--width", "32", "-q", "-o",
                 str(out)]) == 0
    assert "FreeInit 2 passes" in capsys.readouterr().out and out.stat().st_size > 0
    assert main(["generate", "x", "--freeinit-from-top", "-o", str(tmp_path / "c.mp4")]) == 2
    assert "--freeinit-from-top needs --freeinit N" in capsys.readouterr().err

    import argparse

    from vidfusion.cli import FREEINIT_FLAGS, _freeinit_settings

    flags = dict.fromkeys(FREEINIT_FLAGS)
    assert _freeinit_settings(argparse.Namespace(freeinit=3, **flags)).start_at_renoise
    top = _freeinit_settings(argparse.Namespace(freeinit=3, **dict(flags, freeinit_from_top=True)))
    assert not top.start_at_renoise and top.passes == 3
    assert _freeinit_settings(argparse.Namespace(freeinit=3, **dict(flags, freeinit_equal_steps=True))).equal_steps
    with pytest.raises(VidFusionError, match="--freeinit-equal-steps is for passes that enter"):
        _freeinit_settings(argparse.Namespace(freeinit=3, **dict(flags, freeinit_from_top=True,
                                                                    freeinit_equal_steps=True)))


def test_freeinit_pool_pairs_each_video_with_its_own_plain_row_and_pools_files():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from freeinit_pool import check_same_settings, mean_and_se, paired_differences

    def row(index, seed, adherence, colour, size):
        return {"index": index, "seed": seed, "frame_consistency": 0.9, "flicker": 2.0, "motion": 0.5,
                "adherence": adherence, "adherence_colour": colour, "adherence_shape": 0.0,
                "adherence_motion": 1.0, "adherence_count": 1.0, "adherence_size": size}

    # plain rows listed in another order than the config's: pairing must go by (index, seed), not position
    results = {"configs": {
        "plain": {"rows": [row(1, 0, 40.0, 1.0, None), row(0, 0, 60.0, 0.0, 1.0)]},
        "box x3 t820": {"rows": [row(0, 0, 50.0, 1.0, 0.0), row(1, 0, 46.0, 0.5, None)]},
    }}
    d = paired_differences(results, "box x3 t820")
    assert d["adherence"] == [-10.0, 6.0]
    assert d["adherence_colour"] == [100.0, -50.0]  # fractions become points
    assert d["adherence_size"] == [-100.0]  # unscored (None) on either side drops out
    assert d["flicker"] == [0.0, 0.0]
    mean, se = mean_and_se(d["adherence"] + [-2.0])
    assert mean == pytest.approx(-2.0) and se == pytest.approx(math.sqrt(64.0 / 3))
    with pytest.raises(SystemExit, match="not in this sweep"):
        paired_differences(results, "gaussian x3 t820")

    # A file from before session 11 (no start_at_renoise: later passes from the top) does not pool with a new one.
    old = {"configs": {"box x3 t820": {"settings": {"passes": 3}}}}
    new = {"configs": {"box x3 t820": {"settings": {"passes": 3, "start_at_renoise": True}}}}
    check_same_settings([new, new], "box x3 t820")
    with pytest.raises(SystemExit, match="start_at_renoise"):
        check_same_settings([new, old], "box x3 t820")


@pytest.mark.parametrize("from_top", [False, True])
def test_later_passes_run_only_the_steps_below_the_renoise_level(shipped, from_top):
    """3 steps (grid 999, 666, 332), default level 820: pass 2 enters at 666 and runs 666 and 332; from the top it
    runs all three. The model sees exactly those timesteps (the masked-context sampling loop)."""
    settings = FreeInitSettings(passes=2, start_at_renoise=not from_top)
    assert timesteps_seen(shipped, settings) == [999, 666, 332] + ([999, 666, 332] if from_top else [666, 332])


def timesteps_seen(components, settings: FreeInitSettings) -> list[int]:
    """The timesteps at which the model is called in a small() text-to-video run with these FreeInit settings."""
    seen = []

    def record(model_fn):
        def wrapped(x, c, t):
            seen.append(int(t[0]))
            return model_fn(x, c, t)
        return wrapped

    text_to_video(components, small(freeinit=settings), progress=False, wrap_model_fn=record)
    return seen


def test_timesteps_from_a_start_timestep_are_the_tail_of_the_schedule():
    from vidfusion.diffusion.samplers import make_sampler, timesteps_from

    sampler = make_sampler("ddim", SCHEDULE, 5)
    assert timesteps_from(sampler, None).tolist() == [999, 799, 599, 399, 199]
    assert timesteps_from(sampler, 799).tolist() == [799, 599, 399, 199]
    assert timesteps_from(sampler, 798).tolist() == [599, 399, 199]


def test_equal_steps_runs_num_steps_below_the_renoise_level_on_a_finer_grid(shipped):
    """25 steps at t = 820: the 25-step grid has 20 timesteps <= 820; the 31-step grid is the smallest with 25, and
    the pass enters it at 805. The model sees exactly those 25 timesteps, and the pass runs 25 steps like the first."""
    from vidfusion.diffusion.freeinit import grid_for_steps_below

    assert grid_for_steps_below(SCHEDULE, 25, 820) == 31
    grid = inference_timesteps(SCHEDULE, 31)
    assert int((grid <= 820).sum()) == 25 and int((inference_timesteps(SCHEDULE, 30) <= 820).sum()) < 25
    assert grid_for_steps_below(SCHEDULE, 25, 10) == SCHEDULE.num_train_timesteps  # only 11 timesteps exist there

    sampler = StandInSampler(smooth_latent())
    noise = torch.randn(1, 5, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    freeinit_sample(sampler, noise, SCHEDULE, FreeInitSettings(passes=2, equal_steps=True), 25)
    assert [c[1:] for c in sampler.calls] == [(25, "pass 1/2", None), (31, "pass 2/2", 805)]

    # small() samples 3 steps: 999, 666, 332; pass 2 needs 3 timesteps <= 820 -> the 4-step grid 999, 749, 499, 249.
    settings = FreeInitSettings(passes=2, equal_steps=True, renoise_timestep=820)
    assert timesteps_seen(shipped, settings) == [999, 666, 332, 749, 499, 249]


def test_sweep_exposure_counts_clipped_pixels_of_a_blown_out_video():
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from freeinit_sweep import exposure

    video = np.full((3, 8, 8, 3), 128, dtype=np.uint8)
    video[:, :4] = 255  # top half white
    video[0, 4:, :, 0] = 5  # one channel dark is not black: the other two are 128
    e = exposure(video)
    assert e["clipped"] == 0.5
    assert e["brightness"] == pytest.approx(video.astype(np.float64).mean())
    assert e["contrast"] == pytest.approx(np.mean([f.astype(np.float64).std() for f in video]), rel=1e-5)
    assert exposure(np.zeros((2, 4, 4, 3), dtype=np.uint8))["clipped"] == 1.0
