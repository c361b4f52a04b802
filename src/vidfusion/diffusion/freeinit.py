"""FreeInit (Wu et al. 2023): re-initialise the sampler's noise with the low frequencies of a diffused first result.

    pass 0:  x0 = sample(n0)                                    (plain sampling; n0 is kept)
    pass k:  z  = add_noise(x0, n0, t_renoise)                  (forward process with the SAME noise n0)
             r  = fresh N(0, I)
             init = IFFT3( L * FFT3(z) + H * FFT3(r) )          (3D FFT over frames, height, width)
             x0 = sample(init)

with L a low-pass filter and H = sqrt(1 - L^2) (or the paper's 1 - L). Progress labels count passes from 1.

The loop knows nothing about the model or the sampler: `freeinit_sample` takes `sample_fn(latents, num_steps, label)
-> clean latents`, so text-to-video, image-to-video, extension and every sampler plug in unchanged. Pass 0 is exactly
`sample_fn(noise, num_steps)`, so FreeInit with one pass is the plain sampler bit for bit. All draws come from the
caller's generator, in pass order, so a seed fixes the whole run.

Decisions that differ from the reference code (diffusers' FreeInitMixin, the paper's repository), on purpose:

- Later passes start at the re-noise level, not at t = 999 (zero terminal SNR; "Where later passes start" below).

- Frequency coordinates are 2 * fftfreq(N) per axis, i.e. cycles per sample scaled to [-1, 1). For even N this is
  the paper's 2t/N - 1 after fftshift, value for value; for odd N the paper's formula puts DC half a bin off centre
  (T = 5 latent frames: DC at -0.2), so its "low-pass" filter does not even pass DC fully. Ours has DC at 0 for
  every size, and the filter is symmetric (L(k) = L(-k)), so the mixed spectrum stays Hermitian and the inverse FFT
  is real up to rounding; we build it in FFT order, so no fftshift is needed.
- Distance: d^2 = ((d_s / d_t) f_t)^2 + f_h^2 + f_w^2 (the paper's). Gaussian exp(-d^2 / (2 d_s^2)) and
  Butterworth 1 / (1 + (d^2 / d_s^2)^n) as the paper. Ideal passes d <= d_s: the reference compares d^2 <= 2 d_s,
  which mixes units (a distance squared against a distance) and at d_s = 0.25 passes d <= 0.71 instead of 0.25;
  d_s is the stop frequency for every other filter (Butterworth is at half power there), so ideal cuts there too.
  Box passes |f_t| <= d_t, |f_h| <= d_s, |f_w| <= d_s: the paper's centred cube of half-width round(N/2 * d) bins,
  but inclusive and symmetric; the reference slices [c - k, c + k), which is lopsided, and for 5 latent frames gives
  k = round(2 * 0.25) = 0, an empty (all-zero) filter.
- Mixing weights: with `preserve_variance` (the default) the fresh noise gets sqrt(1 - L^2) instead of 1 - L. When z
  is itself N(0, I), every frequency of the result then has variance L^2 + (1 - L^2) = 1, as the sampler's first
  step expects of its input; the paper's 1 - L gives L^2 + (1 - L)^2, down to 1/2 in the filter's transition band.
  For 0/1 filters (ideal, box) the two are identical. Measured on the tiny model's latent grid (5 x 16 x 16) with
  z and r independent N(0, I): variance 1 with `preserve_variance`, mean(L^2 + (1 - L)^2) = 0.994 (Butterworth) and
  0.961 (Gaussian) with the paper's weights.

Re-noise level. The paper diffuses to t = 999, where the SD-style schedule still keeps alphabar = 0.00466
(sqrt = 0.068 of the clean latent). With CogVideoX's zero-terminal-SNR schedule alphabar(999) = 0, so
add_noise(x0, n0, 999) returns n0 exactly and FreeInit would only swap n0's high frequencies for fresh ones, a new
random draw that keeps nothing of the first pass: the level must be a parameter (`FreeInitSettings.renoise_timestep`, any timestep of the schedule; `timestep_for_alphabar`
converts an alphabar). The default is DEFAULT_RENOISE_ALPHABAR = 0.0133, read on the model's own schedule (t = 820
for the 5B/tiny schedule with snr shift 1, t = 732 for 2B's shift 3).

What is kept at each level (`python benchmarks/freeinit_sweep.py --measure-renoise`; the shipped v4 VAE's latents of
16 world val clips, scaled as the DiT sees them, Butterworth 0.25/0.25, 5 x 16 x 16 grid). "signal" is the share of
z's low-pass energy that comes from x0 (the rest is n0); "init std" is the std of the mixed init (1 = what a
sampler started at t = 999 expects); "corr" is the correlation of the init's low band with x0's low band:

    t     alphabar   signal   init std   corr
    999   0          0.000    1.000      -0.02
    950   0.00059    0.076    1.000      0.25
    900   0.00296    0.294    1.001      0.52
    880   0.00464    0.395    1.002      0.61    <- the paper's alphabar (SD's alphabar(999))
    850   0.00820    0.537    1.004      0.71
    820   0.01327    0.653    1.006      0.79    <- default
    800   0.01764    0.716    1.008      0.83
    700   0.05525    0.891    1.025      0.94
    500   0.24102    0.978    1.105      0.99

The clean latents put 96% of their energy in this low band (white noise: 0.8%), so even a tiny alphabar shows
there. Above t ~ 950 less than 8% of the band is kept and FreeInit is close to a fresh draw; towards t = 500 the
next pass is only a re-rendering of the first (SDEdit-like) and the init's std drifts from the 1.0 the t = 999 step
was trained on.

Where later passes start (`start_at_renoise`, default on; `--freeinit-from-top` turns it off). The paper samples
every pass from the top of the schedule, which is consistent there: SD's t = 999 still has the alphabar it re-noised
to. Under zero terminal SNR the sampler's first step (t = 999) assumes no signal at all, and the next few assume
alphabar far below the re-noise level's, so the kept low band reads as a clean latent several times too strong. On
v4, 6 videos that had lost an object's colour under FreeInit on the GPU were made again on the CPU (DDIM 25 steps,
t = 820): all 6 came out on a flat white (5) or black (1) background, and in 4 the checker found no object. So a
later pass is re-noised to the first timestep of its sampling grid at or below the re-noise level (799 for 25 steps
at 820) and runs only the steps from there: the init is then noised to exactly the level its first step assumes.
The same 6 videos kept every colour. It also costs fewer steps: with 25 steps and t = 820, 25 + 20 + 20 instead of
75 for 3 passes.

Measured with the corrected entry, v4, 3 Butterworth passes, 100 held-out prompts x 2 seeds, one H100, paired
against plain sampling (session 11):

    t     consistency x100   flicker          motion px   adherence points
    880   +0.15 +- 0.07      +0.01 +- 0.08    0.66        +1.1 +- 1.3
    850   +0.27 +- 0.07      +0.02 +- 0.09    0.64        +2.4 +- 1.4
    820   +0.42 +- 0.07      +0.02 +- 0.09    0.62        +3.5 +- 1.4     <- default
    750   +0.67 +- 0.09      +0.20 +- 0.12    0.59        +2.7 +- 1.3
    650   +0.87 +- 0.10      +0.46 +- 0.14    0.57        +1.6 +- 1.3
    500   +1.14 +- 0.12      +1.92 +- 0.18    0.59        -1.5 +- 1.4

(plain: consistency 98.26, flicker 2.44, motion 0.67 px, adherence 40.3.) Adherence no longer falls, and at 820 it
rises, but flicker does not fall at any level: the flicker drop measured before (below) came with the blown-out
frames, which have no flicker to measure (session 12 counted them: from the top at t = 820, 166 of the 200 videos
have over half their pixels clipped to white or black; plain sampling, none). Neither other filters (Gaussian, ideal,
box), nor 2 or 5 passes, nor `equal_steps` lower flicker by more than 1.5 standard errors (docs/freeinit.md). The
likely reason: FreeInit closes the gap between training noise, which keeps low frequencies, and inference noise;
zero terminal SNR already closes it (the model is trained on pure noise at t = 999), so a later pass only re-samples
with the first pass's layout kept, and its fresh high frequencies change from frame to frame as freely as before.
820 stays the default: the most consistency with unchanged flicker. Pooled with two out-of-sample runs (seeds 2 and
3; prompts 100-199), 600 videos: consistency +0.35 +- 0.04, flicker +0.14 +- 0.06, adherence +1.9 +- 0.8.

The measurements before session 11 sampled later passes from the top. Why 820 and not the paper's level then: on
the shipped model (tiny-t2v v4), 100 held-out prompts, 3 Butterworth passes against plain sampling
(`benchmarks/freeinit_sweep.py --from-top 1`, one H100; paired differences, mean +- standard error):

    t     consistency x100   flicker          motion px   adherence points
    950   +0.21 +- 0.08      +0.33 +- 0.13    0.78        +1.4 +- 1.3
    880   +0.35 +- 0.10      +0.89 +- 0.31    1.04        +0.4 +- 1.4
    850   +0.57 +- 0.10      +0.33 +- 0.31    0.99        +1.9 +- 1.6
    820   +0.79 +- 0.12      -0.53 +- 0.21    0.87        +0.7 +- 1.7
    800   +0.99 +- 0.11      -0.83 +- 0.19    0.77        -2.3 +- 1.8
    780   +1.12 +- 0.11      -1.07 +- 0.15    0.69        -4.2 +- 2.0

(seeds 0 and 1; plain: 98.26, flicker 2.44, motion 0.67 px, adherence 40.2.) Keeping more of the first pass raises
consistency and lowers flicker, and past a point costs adherence. At the paper's level flicker rises; 820 is the
highest level whose flicker falls while adherence holds. It was picked on these prompts and seeds, so it was
re-measured on new noise (seeds 2 and 3, same prompts): +0.77 +- 0.12, -0.96 +- 0.22, 0.87 px, -2.4 +- 1.7. Over
all 400 videos: consistency +0.78 +- 0.09, flicker -0.75 +- 0.15, motion 0.68 -> 0.87 px, adherence -0.8 +- 1.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vidfusion.diffusion.prediction import add_noise
from vidfusion.diffusion.schedule import ScheduleConfig, alphas_cumprod, inference_timesteps
from vidfusion.errors import VidFusionError

FILTERS = ("butterworth", "gaussian", "ideal", "box")
LAYOUTS = ("bfchw", "bcfhw")  # the transformer's [B, F, C, H, W] and the VAE's [B, C, F, H, W]
DEFAULT_RENOISE_ALPHABAR = 0.0133  # t = 820 on the 5B schedule; measured choice, see the module docstring

# sample_fn(latents, num_steps, label, start) -> clean latents; label ("pass 2/3") is for the progress bar; start is
# None (the whole schedule) or a timestep of the sampler's grid that `latents` are noised to (run the steps <= start).
SampleFn = Callable[[torch.Tensor, int, str, int | None], torch.Tensor]


@dataclass(frozen=True)
class FreeInitSettings:
    passes: int = 3
    filter: str = "butterworth"
    order: int = 4  # Butterworth only
    d_s: float = 0.25  # spatial stop frequency, in the normalised units of `frequency_distance_sq`
    d_t: float = 0.25  # temporal stop frequency
    renoise_timestep: int | None = None  # None: the schedule's timestep nearest DEFAULT_RENOISE_ALPHABAR
    coarse_to_fine: bool = False  # pass i runs int(num_steps / passes * (i + 1)) steps instead of num_steps
    # Later passes enter the sampler's schedule at the re-noise level (see the module docstring); False samples them
    # from the top, t = 999, as the paper does (and as this module did until session 11).
    start_at_renoise: bool = True
    # With start_at_renoise, later passes run the grid's steps below the re-noise level (20 of 25 at t = 820). True
    # runs num_steps there instead, on a finer grid (`grid_for_steps_below`): equal steps per pass.
    equal_steps: bool = False
    preserve_variance: bool = True  # fresh-noise weight sqrt(1 - L^2) instead of 1 - L (see the module docstring)


def check_settings(settings: FreeInitSettings, schedule: ScheduleConfig | None = None) -> None:
    """One-line errors for impossible settings; the timestep range needs the schedule."""
    if settings.passes < 1:
        raise VidFusionError(f"--freeinit {settings.passes} must be at least 1 pass (3 is typical; 1 is plain sampling)")
    if settings.filter not in FILTERS:
        raise VidFusionError(f"--freeinit-filter {settings.filter!r} is unknown; use one of {', '.join(FILTERS)}")
    if settings.order < 1:
        raise VidFusionError(f"Butterworth order {settings.order} must be at least 1 (4 is the paper's)")
    for flag, value in (("--freeinit-ds", settings.d_s), ("--freeinit-dt", settings.d_t)):
        if not value > 0:
            raise VidFusionError(f"{flag} {value} must be above 0 (0.25 is the paper's)")
    if schedule is not None and settings.renoise_timestep is not None:
        last = schedule.num_train_timesteps - 1
        if not 0 <= settings.renoise_timestep <= last:
            raise VidFusionError(f"--freeinit-renoise {settings.renoise_timestep} is not a timestep; use 0 to {last} "
                                 f"(higher keeps less of the previous pass)")


def timestep_for_alphabar(schedule: ScheduleConfig, alphabar: float) -> int:
    """The timestep whose alphabar is nearest `alphabar`."""
    return int((alphas_cumprod(schedule) - alphabar).abs().argmin())


def renoise_timestep(schedule: ScheduleConfig, settings: FreeInitSettings) -> int:
    if settings.renoise_timestep is not None:
        return settings.renoise_timestep
    return timestep_for_alphabar(schedule, DEFAULT_RENOISE_ALPHABAR)


def entry_timestep(schedule: ScheduleConfig, num_steps: int, t: int) -> int:
    """The largest timestep of the `num_steps` sampling grid at or below t (the grid's last one if none is)."""
    grid = inference_timesteps(schedule, num_steps)
    below = grid[grid <= t]
    return int(below[0]) if len(below) else int(grid[-1])


def grid_for_steps_below(schedule: ScheduleConfig, num_steps: int, t: int) -> int:
    """The smallest sampling grid (its step count) with at least `num_steps` timesteps at or below t; the full
    1-step-per-timestep grid when none has (t < num_steps)."""
    last = schedule.num_train_timesteps
    for size in range(num_steps, last + 1):
        if int((inference_timesteps(schedule, size) <= t).sum()) >= num_steps:
            return size
    return last


def pass_steps(num_steps: int, passes: int, coarse_to_fine: bool) -> list[int]:
    """Sampling steps of each pass; coarse-to-fine grows them to num_steps on the last pass (the paper's schedule)."""
    if not coarse_to_fine:
        return [num_steps] * passes
    return [max(1, int(num_steps / passes * (i + 1))) for i in range(passes)]


# ------------------------------------------------------------------------------------------------------- filters


def frequency_distance_sq(shape: tuple[int, int, int], d_s: float, d_t: float, device=None) -> torch.Tensor:
    """[F, H, W] squared normalised distance of each FFT bin from DC, in FFT (unshifted) order.

    Each axis's coordinate is 2 * fftfreq(N) in [-1, 1); time is stretched by d_s / d_t so that one spatial stop
    frequency d_s describes both (the paper's convention)."""
    frames, height, width = shape
    f_t = 2 * torch.fft.fftfreq(frames, device=device, dtype=torch.float64) * (d_s / d_t)
    f_h = 2 * torch.fft.fftfreq(height, device=device, dtype=torch.float64)
    f_w = 2 * torch.fft.fftfreq(width, device=device, dtype=torch.float64)
    return f_t[:, None, None] ** 2 + f_h[None, :, None] ** 2 + f_w[None, None, :] ** 2


def low_pass_filter(
    shape: tuple[int, int, int], kind: str = "butterworth", d_s: float = 0.25, d_t: float = 0.25, order: int = 4,
    device=None,
) -> torch.Tensor:
    """[F, H, W] float32 filter in [0, 1] over (frames, height, width), FFT order (torch.fft.fftshift to view it)."""
    if kind == "box":
        frames, height, width = shape
        f_t = 2 * torch.fft.fftfreq(frames, device=device, dtype=torch.float64).abs() <= d_t
        f_h = 2 * torch.fft.fftfreq(height, device=device, dtype=torch.float64).abs() <= d_s
        f_w = 2 * torch.fft.fftfreq(width, device=device, dtype=torch.float64).abs() <= d_s
        return (f_t[:, None, None] & f_h[None, :, None] & f_w[None, None, :]).float()
    d2 = frequency_distance_sq(shape, d_s, d_t, device)
    if kind == "gaussian":
        lpf = torch.exp(-d2 / (2 * d_s**2))
    elif kind == "butterworth":
        lpf = 1 / (1 + (d2 / d_s**2) ** order)
    elif kind == "ideal":
        lpf = (d2 <= d_s**2).double()
    else:
        raise VidFusionError(f"--freeinit-filter {kind!r} is unknown; use one of {', '.join(FILTERS)}")
    return lpf.float()


def _layout_dims(layout: str) -> tuple[int, int, int]:
    """(frame, height, width) axes of a 5-D latent in `layout`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    return (1, 3, 4) if layout == "bfchw" else (2, 3, 4)


def grid_shape(latents: torch.Tensor, layout: str = "bfchw") -> tuple[int, int, int]:
    """(frames, height, width) of a 5-D latent."""
    return tuple(latents.shape[d] for d in _layout_dims(layout))


def mix_frequencies(
    low: torch.Tensor, high: torch.Tensor, lpf: torch.Tensor, layout: str = "bfchw", preserve_variance: bool = True,
) -> torch.Tensor:
    """IFFT3(L * FFT3(low) + H * FFT3(high)), H = sqrt(1 - L^2) or 1 - L, over frames, height and width.

    `lpf` is [F, H, W] in FFT order (`low_pass_filter`); computed in float32 (FFTs of bf16 are not supported and
    would lose the small high-frequency terms), returned in `low`'s dtype."""
    dims = _layout_dims(layout)
    assert low.shape == high.shape and low.ndim == 5, f"latents {list(low.shape)} and {list(high.shape)}"
    assert grid_shape(low, layout) == tuple(lpf.shape), f"filter {list(lpf.shape)} for latents {list(low.shape)}"
    shape = [1] * 5
    for d, n in zip(dims, lpf.shape):
        shape[d] = n
    keep = lpf.to(low.device, torch.float32).reshape(shape)
    fresh = (1 - keep**2).clamp(min=0).sqrt() if preserve_variance else 1 - keep
    spectrum = torch.fft.fftn(low.float(), dim=dims) * keep + torch.fft.fftn(high.float(), dim=dims) * fresh
    return torch.fft.ifftn(spectrum, dim=dims).real.to(low.dtype)


# ------------------------------------------------------------------------------------------------------- the loop


def freeinit_sample(
    sample_fn: SampleFn,
    noise: torch.Tensor,
    schedule: ScheduleConfig,
    settings: FreeInitSettings,
    num_steps: int,
    generator: torch.Generator | None = None,
    layout: str = "bfchw",
) -> torch.Tensor:
    """Run `settings.passes` sampling passes from `noise` (5-D, `layout`); returns the last pass's clean latents.

    Fresh noise is drawn on the generator's device (as `initial_noise` draws n0), so a seed gives the same result
    on every device; the sampler's own draws (DPM) interleave with them in pass order."""
    check_settings(settings, schedule)
    t = renoise_timestep(schedule, settings)
    ab = alphas_cumprod(schedule)
    lpf = low_pass_filter(grid_shape(noise, layout), settings.filter, settings.d_s, settings.d_t, settings.order,
                          noise.device)
    steps = pass_steps(num_steps, settings.passes, settings.coarse_to_fine)
    clean = sample_fn(noise, steps[0], f"pass 1/{settings.passes}", None)
    for i in range(1, settings.passes):
        grid = steps[i]
        if settings.start_at_renoise and settings.equal_steps:
            grid = grid_for_steps_below(schedule, steps[i], t)
        start = entry_timestep(schedule, grid, t) if settings.start_at_renoise else None
        diffused = add_noise(ab, clean.float(), noise.float(), t if start is None else start)
        draw_on = generator.device if generator is not None else noise.device
        fresh = torch.randn(noise.shape, generator=generator, device=draw_on, dtype=torch.float32).to(noise.device)
        init = mix_frequencies(diffused, fresh, lpf, layout, settings.preserve_variance).to(noise.dtype)
        clean = sample_fn(init, grid, f"pass {i + 1}/{settings.passes}", start)
    return clean
