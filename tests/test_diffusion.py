"""Parity of vidfusion.diffusion with diffusers' CogVideoX schedulers and pipeline (schedule, samplers, guidance)."""

import dataclasses
import inspect
import math

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline  # noqa: E402

from vidfusion.diffusion import guidance, prediction, samplers, schedule  # noqa: E402
from vidfusion.diffusion.schedule import COGVIDEOX_2B_SCHEDULE, COGVIDEOX_5B_SCHEDULE, ScheduleConfig  # noqa: E402
from vidfusion.errors import VidFusionError  # noqa: E402

# The released scheduler_config.json files (CogVideoX-2b; the 5b ones differ only in snr_shift_scale).
RELEASED_2B = {
    "_class_name": "CogVideoXDDIMScheduler",
    "_diffusers_version": "0.30.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}
RELEASED_5B = {**RELEASED_2B, "snr_shift_scale": 1.0}
PRESETS = {"2b": (COGVIDEOX_2B_SCHEDULE, RELEASED_2B), "5b": (COGVIDEOX_5B_SCHEDULE, RELEASED_5B)}


# ---------------------------------------------------------------------------------------------------------------
# config and schedule


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_the_released_configs(preset):
    ours, released = PRESETS[preset]
    assert ScheduleConfig.from_dict(released) == ours
    d = ours.to_dict("CogVideoXDPMScheduler")
    assert d["_class_name"] == "CogVideoXDPMScheduler"
    assert {k: v for k, v in d.items() if k != "_class_name"} == {
        k: v for k, v in released.items() if not k.startswith("_")
    }
    # diffusers reads our dict back to the same config.
    ref = CogVideoXDPMScheduler.from_config(d)
    assert {k: ref.config[k] for k in d if k != "_class_name"} == {k: d[k] for k in d if k != "_class_name"}


def test_config_keys_are_diffusers_keys():
    ours = {f.name for f in dataclasses.fields(ScheduleConfig)}
    for cls in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler):
        assert ours == set(inspect.signature(cls.__init__).parameters) - {"self"}


def test_config_errors():
    with pytest.warns(UserWarning, match="snr_shift"):
        assert ScheduleConfig.from_dict({**RELEASED_2B, "snr_shift": 3.0}) == ScheduleConfig.from_dict(RELEASED_2B)
    with pytest.raises(VidFusionError, match="describes a EulerDiscreteScheduler"):
        ScheduleConfig.from_dict({**RELEASED_2B, "_class_name": "EulerDiscreteScheduler"})
    with pytest.raises(VidFusionError, match="timestep_spacing='middle'"):
        ScheduleConfig(timestep_spacing="middle")
    with pytest.raises(VidFusionError, match="num_steps=0"):
        schedule.inference_timesteps(COGVIDEOX_5B_SCHEDULE, 0)
    with pytest.raises(VidFusionError, match="CogVideoXEulerScheduler"):
        COGVIDEOX_5B_SCHEDULE.to_dict("CogVideoXEulerScheduler")


@pytest.mark.parametrize("preset", PRESETS)
def test_alphas_cumprod_match_diffusers(preset):
    ours, released = PRESETS[preset]
    ref = CogVideoXDDIMScheduler.from_config(released).alphas_cumprod
    ab = schedule.alphas_cumprod(ours)
    assert ab.dtype == ref.dtype == torch.float64
    assert torch.equal(ab, ref)
    assert ab[-1] == 0 and 0.99 < ab[0] < 1  # zero terminal SNR, first step kept


def test_alphas_cumprod_linear_betas_match_diffusers():
    d = {**RELEASED_2B, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
    d["rescale_betas_zero_snr"] = False
    ref = CogVideoXDDIMScheduler.from_config(d).alphas_cumprod
    ab = schedule.alphas_cumprod(ScheduleConfig.from_dict(d))
    assert ab.dtype == ref.dtype and torch.equal(ab, ref)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_timesteps_match_diffusers_for_every_step_count(spacing):
    d = {**RELEASED_5B, "timestep_spacing": spacing, "steps_offset": 1 if spacing == "leading" else 0}
    ref = CogVideoXDDIMScheduler.from_config(d)
    config = ScheduleConfig.from_dict(d)
    for n in range(1, 1001):
        ref.set_timesteps(n)
        ours = schedule.inference_timesteps(config, n)
        assert ours.dtype == torch.long and torch.equal(ours, ref.timesteps), n
    assert schedule.inference_timesteps(COGVIDEOX_5B_SCHEDULE, 50).tolist() == list(range(999, 0, -20))


# ---------------------------------------------------------------------------------------------------------------
# sampling trajectories


def toy_model(seed: int = 0):
    """A fixed deterministic 'v-predictor' of (sample, t) on [B, F, C, H, W] latents."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 4, generator=g) / 2
    b = torch.randn(4, generator=g)

    def model(x: torch.Tensor, t) -> torch.Tensor:
        return torch.tanh(torch.einsum("bfchw,dc->bfdhw", x, w) + (float(t) / 1000) * b[:, None, None])

    return model


def reference_trajectory(released: dict, sampler: str, num_steps: int, x: torch.Tensor, seed: int):
    """Drive diffusers' scheduler the way CogVideoXPipeline.__call__ does (eta = 0, generator passed through)."""
    cls = CogVideoXDDIMScheduler if sampler == "ddim" else CogVideoXDPMScheduler
    scheduler = cls.from_config(released)
    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps
    model, generator = toy_model(), torch.Generator().manual_seed(seed)
    extra = {"eta": 0.0, "generator": generator}
    xs, old_pred_original_sample = [], None
    for i, t in enumerate(timesteps):
        v = model(scheduler.scale_model_input(x, t), t)
        if sampler == "ddim":
            x = scheduler.step(v, t, x, **extra, return_dict=False)[0]
        else:
            x, old_pred_original_sample = scheduler.step(
                v, old_pred_original_sample, t, timesteps[i - 1] if i > 0 else None, x, **extra, return_dict=False
            )
        xs.append(x)
    return timesteps, xs


def our_trajectory(sampler, x: torch.Tensor, seed: int):
    model, generator = toy_model(), torch.Generator().manual_seed(seed)
    xs = []
    for t in sampler.timesteps:
        x, _ = sampler.step(model(x, t), t, x, generator=generator)
        xs.append(x)
    return xs


# 7 steps: the last step lands on t = 0 and is second order; 30 steps: 1000 % 30 != 0.
@pytest.mark.parametrize("num_steps", [1, 2, 7, 30, 50])
@pytest.mark.parametrize("name", ["ddim", "dpm"])
@pytest.mark.parametrize("preset", PRESETS)
def test_trajectory_matches_diffusers(preset, name, num_steps):
    config, released = PRESETS[preset]
    x = torch.randn(2, 3, 4, 4, 5, generator=torch.Generator().manual_seed(1))
    ref_t, ref_xs = reference_trajectory(released, name, num_steps, x, seed=7)
    sampler = samplers.make_sampler(name, config, num_steps)
    assert torch.equal(sampler.timesteps, ref_t)
    ours = our_trajectory(sampler, x, seed=7)
    assert len(ours) == len(ref_xs) == num_steps
    for i, (a, b) in enumerate(zip(ours, ref_xs)):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max().item() <= 1e-6, f"step {i}"
        assert torch.isfinite(a).all()


def test_dpm_reset_and_noise():
    x = torch.randn(1, 3, 4, 4, 5, generator=torch.Generator().manual_seed(2))
    sampler = samplers.DPMSolverSampler(COGVIDEOX_5B_SCHEDULE, 10)
    first = our_trajectory(sampler, x, seed=3)[-1]
    sampler.reset()
    assert torch.equal(our_trajectory(sampler, x, seed=3)[-1], first)
    sampler.reset()
    # The SDE noise matters: another seed ends elsewhere (DDIM ignores the generator).
    assert (our_trajectory(sampler, x, seed=4)[-1] - first).abs().max() > 1e-3
    ddim = samplers.DDIMSampler(COGVIDEOX_5B_SCHEDULE, 10)
    assert torch.equal(our_trajectory(ddim, x, seed=3)[-1], our_trajectory(ddim, x, seed=4)[-1])


def test_sampler_errors():
    with pytest.raises(VidFusionError, match="unknown sampler 'euler'.*ddim, dpm"):
        samplers.make_sampler("euler", COGVIDEOX_5B_SCHEDULE, 50)
    with pytest.raises(VidFusionError, match="v_prediction"):
        samplers.make_sampler("ddim", ScheduleConfig(prediction_type="epsilon"), 50)


# ---------------------------------------------------------------------------------------------------------------
# v-prediction algebra


@pytest.mark.parametrize("layout", ["bfchw", "bcfhw"])
def test_add_noise_and_v_target_match_diffusers(layout):
    shape = (4, 3, 2, 4, 5) if layout == "bfchw" else (4, 2, 3, 4, 5)
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.tensor([0, 250, 731, 999])
    ref = CogVideoXDDIMScheduler.from_config(RELEASED_2B)
    ab = schedule.alphas_cumprod(COGVIDEOX_2B_SCHEDULE)

    x_t = prediction.add_noise(ab, x0, noise, t)
    v = prediction.v_target(ab, x0, noise, t)
    torch.testing.assert_close(x_t, ref.add_noise(x0, noise, t), rtol=0, atol=1e-6)
    torch.testing.assert_close(v, ref.get_velocity(x0, noise, t), rtol=0, atol=1e-6)
    assert torch.equal(x_t[3], noise[3])  # zero SNR at t = 999

    # Round trips, and x0 from v is what the diffusers DDIM step predicts for each sample.
    torch.testing.assert_close(prediction.x0_from_v(ab, x_t, v, t), x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(prediction.eps_from_v(ab, x_t, v, t), noise, rtol=0, atol=1e-5)
    ref.set_timesteps(50)
    for i in range(4):
        ref_x0 = ref.step(v[i : i + 1], int(t[i]), x_t[i : i + 1], return_dict=False)[1]
        assert torch.equal(prediction.x0_from_v(ab, x_t[i : i + 1], v[i : i + 1], int(t[i])), ref_x0)


def test_round_trip_float64_is_tight():
    g = torch.Generator().manual_seed(6)
    x0, noise = (torch.randn(3, 2, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([3, 500, 998])
    ab = schedule.alphas_cumprod(COGVIDEOX_5B_SCHEDULE)
    x_t, v = prediction.add_noise(ab, x0, noise, t), prediction.v_target(ab, x0, noise, t)
    torch.testing.assert_close(prediction.x0_from_v(ab, x_t, v, t), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(prediction.eps_from_v(ab, x_t, v, t), noise, rtol=0, atol=1e-12)


def test_loss_weight_is_the_cogvideox_training_weight():
    ab = schedule.alphas_cumprod(COGVIDEOX_2B_SCHEDULE)
    t = torch.tensor([0, 400, 999])
    w = prediction.loss_weight(ab, t)
    ref = CogVideoXDDIMScheduler.from_config(RELEASED_2B).alphas_cumprod[t]
    assert torch.equal(w, 1 / (1 - ref))
    assert w[2] == 1 and w[0] > 300  # 2B: ~393 at t = 0
    # Weighted x0 error (how CogVideoX training applies it) equals the plain v error.
    g = torch.Generator().manual_seed(8)
    x_t, v, v_hat = (torch.randn(3, 2, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    x0, x0_hat = prediction.x0_from_v(ab, x_t, v, t), prediction.x0_from_v(ab, x_t, v_hat, t)
    torch.testing.assert_close(w[:, None] * (x0_hat - x0).flatten(1).pow(2), (v_hat - v).flatten(1).pow(2))


# ---------------------------------------------------------------------------------------------------------------
# guidance


PIPELINE_FORMULA = "(1 - math.cos(math.pi * ((num_inference_steps - t.item()) / num_inference_steps) ** 5.0)) / 2"


def test_dynamic_cfg_scale_is_the_pipeline_formula():
    assert PIPELINE_FORMULA in inspect.getsource(CogVideoXPipeline.__call__)
    for num_inference_steps in (10, 50):
        for t in (torch.tensor(999), torch.tensor(500), torch.tensor(61), torch.tensor(19)):
            expected = 1 + 6.0 * eval(PIPELINE_FORMULA, {"math": math}, locals())
            assert guidance.dynamic_cfg_scale(6.0, t, num_inference_steps) == expected
            assert guidance.dynamic_cfg_scale(6.0, int(t), num_inference_steps) == expected
    # By hand: t = 19 of 50 steps: 1 + 6 (1 - cos(pi 0.62^5)) / 2.
    by_hand = 1 + 3 * (1 - math.cos(math.pi * 0.62**5))
    assert guidance.dynamic_cfg_scale(6.0, 19, 50) == pytest.approx(by_hand, abs=1e-12)
    assert guidance.dynamic_cfg_scale(6.0, 50, 50) == 1.0


def test_cfg():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert torch.equal(guidance.cfg(u, c, 6.0), torch.tensor([13.0, 13.0]))
    assert torch.equal(guidance.cfg(u, c, 1.0), c)
    assert torch.equal(guidance.cfg(u, c, 0.0), u)
