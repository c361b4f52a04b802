"""Masked-context conditioning (T2V / I2V / extension / interpolation in one model), long videos, interpolation."""

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from vidfusion.diffusion.samplers import make_sampler
from vidfusion.diffusion.schedule import COGVIDEOX_5B_SCHEDULE
from vidfusion.errors import VidFusionError
from vidfusion.evaluation.context_eval import frame_changes, linear_blend, seam_ratio
from vidfusion.io.pretrained import Components
from vidfusion.models.transformer import CogVideoXTransformer, tiny_config
from vidfusion.models.vae import CogVideoXVAE, tiny_random_config
from vidfusion.pipelines import interpolation, long_video
from vidfusion.pipelines.masked_context import (
    Context,
    denoise_with_context,
    empty_context_model_fn,
    encode_context,
    generate_with_context,
    hold_fill,
    latent_mask,
    model_input,
)
from vidfusion.pipelines.text_to_video import T2VRequest, decode, denoise, encode_prompts, initial_noise, text_to_video
from vidfusion.training.train_dit import widen_start_weights

TEXT_DIM, TEXT_LEN = 20, 7


class FakeText:
    """Deterministic per-prompt states, so tests need no text model."""

    dim = TEXT_DIM

    def __call__(self, prompts):
        rows = []
        for p in prompts:
            seed = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


def context_components(seed=0, **overrides):
    torch.manual_seed(seed)
    vae = CogVideoXVAE(tiny_random_config()).eval()
    c = vae.config.latent_channels
    config = tiny_config("cogvideox-5b", in_channels=2 * c + 1, out_channels=c, ofs_embed_dim=24,
                         sample_height=8, sample_width=8, sample_frames=9, **overrides)
    model = CogVideoXTransformer(config).eval()
    with torch.no_grad():  # random values everywhere, so no path hides behind a zero-initialised layer
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    return Components(model, vae, FakeText(), COGVIDEOX_5B_SCHEDULE, defaults={"fps": 8})


# ------------------------------------------------------------------------------------------------ context building


def test_latent_mask_is_the_known_share_of_each_latent_frame():
    known = torch.zeros(3, 17, dtype=torch.bool)
    known[0, 0] = True  # image-to-video
    known[1, :5] = True  # extension by 5 frames = 2 whole latents
    known[2, ::4] = True  # interpolation keys
    mask = latent_mask(known)
    assert mask.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0.25, 0.25, 0.25, 0.25]]
    with pytest.raises(VidFusionError, match="4k \\+ 1"):
        latent_mask(torch.zeros(1, 16, dtype=torch.bool))


def test_hold_fill_repeats_the_previous_known_frame():
    video = torch.arange(6.0).view(1, 1, 6, 1, 1).repeat(2, 1, 1, 1, 1)
    known = torch.tensor([[False, True, False, False, True, False], [False] * 6])
    filled = hold_fill(video, known)
    assert filled[0].flatten().tolist() == [1, 1, 1, 1, 4, 4]  # before the first known: the first known
    assert torch.equal(filled[1], video[1])  # nothing known: unchanged


def test_encode_context_zeroes_unknown_latents_and_scales_known_ones():
    components = context_components()
    vae = components.vae
    vae.config = dataclasses.replace(vae.config, scaling_factor=0.7)
    video = torch.rand(2, 3, 9, 64, 64) * 2 - 1
    known = torch.zeros(2, 9, dtype=torch.bool)
    known[0, :5] = True
    latents, mask = encode_context(vae, video, known)
    assert mask.tolist() == [[1, 1, 0], [0, 0, 0]]
    assert latents[0, 2].abs().max() == 0 and latents[1].abs().max() == 0
    expected = vae.encode(hold_fill(video[:1], known[:1])).mode() * 0.7
    torch.testing.assert_close(latents[0, :2], expected[0].permute(1, 0, 2, 3)[:2])
    noisy, _ = encode_context(vae, video, known, noise_sigmas=torch.full((2,), 0.5),
                              generator=torch.Generator().manual_seed(0))
    assert (noisy[0, :2] - latents[0, :2]).abs().mean() > 1e-3 and noisy[1].abs().max() == 0


def test_model_input_layout():
    x, ctx = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 4, 5, 6)
    mask = torch.tensor([[1.0, 0.25, 0.0], [0.0, 0.0, 0.0]])
    inp = model_input(x, ctx, mask)
    assert inp.shape == (2, 3, 9, 5, 6)
    assert torch.equal(inp[:, :, :4], x) and torch.equal(inp[:, :, 4:8], ctx)
    assert torch.equal(inp[:, :, 8], mask[:, :, None, None].expand(2, 3, 5, 6))


def test_widened_text_to_video_weights_compute_the_same_on_an_empty_context():
    torch.manual_seed(0)
    plain_cfg = tiny_config("cogvideox-5b", sample_height=8, sample_width=8, sample_frames=9)
    plain = CogVideoXTransformer(plain_cfg).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    wide = CogVideoXTransformer(dataclasses.replace(plain_cfg, in_channels=9, ofs_embed_dim=24)).eval()
    wide.load_state_dict(widen_start_weights(wide, plain.state_dict()))
    x, text, t = torch.randn(2, 3, 4, 8, 8), torch.randn(2, TEXT_LEN, plain_cfg.text_embed_dim), torch.tensor([3, 700])
    empty = model_input(x, torch.zeros_like(x), torch.zeros(2, 3))
    with torch.no_grad():
        torch.testing.assert_close(wide(empty, text, t, ofs=32.0), plain(x, text, t), rtol=1e-5, atol=1e-6)
        context = model_input(x, torch.randn_like(x), torch.ones(2, 3))
        assert torch.equal(wide(context, text, t, ofs=8.0), wide(empty, text, t, ofs=8.0))  # zero weights on it


# ------------------------------------------------------------------------------------------------ sampling


def test_context_and_text_guidance_combine_as_documented():
    components = context_components()
    torch.manual_seed(1)
    latents = torch.randn(1, 3, 4, 8, 8)
    text = FakeText()(["", "a red circle"])
    ctx = torch.randn(1, 3, 4, 8, 8)
    mask = torch.tensor([[1.0, 0.25, 0.0]])
    s_text, s_ctx, fps = 3.0, 2.0, 32.0
    got = denoise_with_context(components, latents, text, ctx, mask, fps, 3, s_text, s_ctx, "ddim", progress=False)

    model, sampler, x = components.transformer, make_sampler("ddim", COGVIDEOX_5B_SCHEDULE, 3), latents
    with torch.no_grad():
        for t in sampler.timesteps:
            def v(txt, c, m, x=x, t=t):
                return model(model_input(x, c, m), txt, t.expand(1), ofs=fps)
            full = v(text[1:], ctx, mask)
            guided = (full + (s_text - 1) * (full - v(text[:1], ctx, mask))
                      + (s_ctx - 1) * (full - v(text[1:], torch.zeros_like(ctx), torch.zeros_like(mask))))
            x, _ = sampler.step(guided, t, x)
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-5)


def test_generate_with_context_uses_the_known_frames_and_checks_inputs():
    components = context_components()
    request = T2VRequest("a red circle", num_steps=2, seed=3)
    frames = torch.rand(9, 3, 64, 64) * 2 - 1
    known = torch.zeros(9, dtype=torch.bool)
    known[0] = True
    plain = generate_with_context(components, request, Context(None, None), progress=False)
    a = generate_with_context(components, request, Context(frames, known), progress=False)
    b = generate_with_context(components, request, Context(frames, known), progress=False)
    other = frames.clone()
    other[0] = -other[0]
    c = generate_with_context(components, request, Context(other, known), progress=False)
    unseen = frames.clone()
    unseen[1:] = 0  # unknown frames are not read
    d = generate_with_context(components, request, Context(unseen, known), progress=False)
    assert a.shape == (9, 3, 64, 64) and torch.equal(a, b) and torch.equal(a, d)
    assert (a - plain).abs().mean() > 1e-3 and (a - c).abs().mean() > 1e-3
    # interpolation with an empty prompt is allowed (conditioned on frames); plain text-to-video is not
    generate_with_context(components, T2VRequest("", num_steps=1), Context(frames, known), progress=False)
    with pytest.raises(VidFusionError, match="prompt is empty"):
        generate_with_context(components, T2VRequest("", num_steps=1), Context(None, None), progress=False)
    with pytest.raises(VidFusionError, match=r"expected \[9, 3, 64, 64\]"):
        generate_with_context(components, request, Context(frames[:, :, :32], known), progress=False)
    plain_t2v = Components(CogVideoXTransformer(tiny_config("cogvideox-5b", sample_height=8, sample_width=8,
                                                            sample_frames=9)), components.vae, FakeText(),
                           COGVIDEOX_5B_SCHEDULE)
    with pytest.raises(VidFusionError, match="masked-context model"):
        generate_with_context(plain_t2v, request, Context(None, None), progress=False)


def test_empty_context_model_fn_samples_what_text_to_video_does():
    """Benchmarks that batch their own latents sample a masked-context model through empty_context_model_fn and the
    plain loop; text_to_video goes through generate_with_context. Same video, and the frame rate label matters."""
    components = context_components(seed=1)
    request = T2VRequest("a red circle", num_steps=3, guidance_scale=4.0, seed=5)
    want = text_to_video(components, request, progress=False)

    def sample(defaults):
        components.defaults = defaults
        noise = initial_noise((1, 3, 4, 8, 8), torch.Generator("cpu").manual_seed(5), "cpu", torch.float32)
        text = encode_prompts(components, [request.prompt], [""], True)
        latents = denoise(components, noise, text, 3, 4.0, "ddim", progress=False,
                          model_fn=empty_context_model_fn(components))
        return decode(components, latents)[0].transpose(0, 1)

    assert (sample({"fps": 8}) - want).abs().max() < 1e-5
    assert (sample({"fps": 32}) - want).abs().max() > 1e-3  # ofs carries the model's generation fps


# ------------------------------------------------------------------------------------------------ long videos


def fake_generator(calls):
    """Stands in for generate_with_context: records each call; returns frames of value = call index."""

    def fake(components, request, context, progress=True):
        calls.append((request, context))
        frames = request.num_frames or 9
        return torch.full((frames, 3, 64, 64), float(len(calls) - 1))

    return fake


def test_long_video_chunks_context_and_cross_fade(monkeypatch):
    calls = []
    monkeypatch.setattr(long_video, "generate_with_context", fake_generator(calls))
    components = context_components()
    video, joins = long_video.long_video(components, T2VRequest("a red circle", seed=5), 17, context_frames=5,
                                         progress=False)
    # 9-frame chunks adding 4 frames each: 9 + 4 + 4 = 17 frames from 3 chunks
    assert video.shape[0] == 17 and len(calls) == 3 and joins == [9, 13]
    assert [r.seed for r, _ in calls] == [5, 6, 7]
    assert calls[0][1].known is None and calls[1][1].known.tolist() == [True] * 5 + [False] * 4
    assert calls[1][1].fps == 8.0
    w = torch.arange(1, 6) / 6  # the cross-fade from chunk 0 (value 0) to chunk 1 (value 1) over frames 4..8
    torch.testing.assert_close(video[4:8, 0, 0, 0], w[:4])  # frame 8 is faded again into chunk 2, below
    context = torch.tensor([5 / 6, 1, 1, 1, 1])  # the last 5 frames made so far: end of the fade, then chunk 1
    torch.testing.assert_close(calls[2][1].frames[:5, 0, 0, 0], context)
    torch.testing.assert_close(video[8:13, 0, 0, 0], (1 - w) * context + w * 2)
    assert video[13:].eq(2).all()
    assert long_video.chunk_count(170, 17, 5) == 14 and long_video.chunk_count(17, 17, 5) == 1
    for bad in (4, 9, 10, 13):  # not 4s + 1, or no new frames left in a 9-frame chunk
        with pytest.raises(VidFusionError, match="context-frames"):
            long_video.check_context_frames(bad, 9)


def test_long_video_drift_options(monkeypatch):
    """colour_match removes a chunk's per-channel bias on its overlap; context_noise reaches the Context."""
    made = torch.rand(9, 3, 8, 8) * 0.5 - 0.25
    chunk = torch.rand(9, 3, 8, 8) * 0.5
    chunk[:5] = made[-5:] + torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1)  # a biased re-rendering
    matched = long_video.match_colour(made, chunk, 5)
    torch.testing.assert_close(matched[:5], made[-5:])
    torch.testing.assert_close(matched[5:] - chunk[5:], torch.tensor([-0.1, 0.2, -0.05]).view(1, 3, 1, 1).expand(4, 3, 8, 8))
    assert long_video.match_colour(made, chunk * 0 + 2, 5).max() <= 1.0  # stays in range

    calls = []
    monkeypatch.setattr(long_video, "generate_with_context", fake_generator(calls))
    components = context_components()
    long_video.long_video(components, T2VRequest("a red circle"), 13, progress=False, context_noise=0.05)
    assert calls[0][1].noise_sigma == 0.0 and calls[1][1].noise_sigma == 0.05  # the first chunk has no context


def test_context_noise_changes_only_the_context():
    components = context_components(seed=2)
    request = T2VRequest("a red circle", num_steps=2, seed=3)
    frames = torch.rand(9, 3, 64, 64) * 2 - 1
    known = torch.zeros(9, dtype=torch.bool)
    known[:5] = True
    clean = generate_with_context(components, request, Context(frames, known), progress=False)
    noisy = generate_with_context(components, request, Context(frames, known, noise_sigma=0.05), progress=False)
    again = generate_with_context(components, request, Context(frames, known, noise_sigma=0.05), progress=False)
    empty = generate_with_context(components, request, Context(None, None, noise_sigma=0.05), progress=False)
    assert torch.equal(noisy, again) and (noisy - clean).abs().mean() > 1e-4
    assert torch.equal(empty, generate_with_context(components, request, Context(None, None), progress=False))


def test_extend_keeps_the_given_frames_and_refuses_short_videos(monkeypatch):
    calls = []
    monkeypatch.setattr(long_video, "generate_with_context", fake_generator(calls))
    components = context_components()
    start = torch.linspace(-1, 1, 7).view(7, 1, 1, 1).expand(7, 3, 64, 64)
    video, joins = long_video.long_video(components, T2VRequest("go on"), 11, start=start, progress=False)
    assert video.shape[0] == 11 and joins == [7] and torch.equal(video[:2], start[:2])
    assert torch.equal(calls[0][1].frames[:5], start[2:])  # the context is the last 5 given frames
    with pytest.raises(VidFusionError, match="fewer than the 5 context frames"):
        long_video.long_video(components, T2VRequest("go on"), 11, start=start[:3], progress=False)


# ------------------------------------------------------------------------------------------------ interpolation


def test_interpolation_windows_keys_and_frame_rate(monkeypatch):
    calls = []
    monkeypatch.setattr(interpolation, "generate_with_context", fake_generator(calls))
    components = context_components()
    keys = torch.linspace(-1, 1, 6).view(6, 1, 1, 1).expand(6, 3, 64, 64).clone()
    out = interpolation.interpolate(components, keys, 4, T2VRequest(""), fps=8.0, progress=False)
    assert out.shape[0] == 21 == interpolation.interpolated_length(6, 4)
    # windows of 3 keys (9-frame chunks): keys 0-2, 2-4, 4-5 (+ the last key held)
    assert len(calls) == 3 and all(c.fps == 32.0 for _, c in calls)
    assert torch.equal(calls[2][1].frames[::4, 0, 0, 0], keys[[4, 5, 5], 0, 0, 0])
    assert torch.equal(out[::4], keys)  # keys copied exactly
    assert out[1:4].eq(0).all() and out[9:12].eq(1).all() and out[17:20].eq(2).all()

    calls.clear()
    out16 = interpolation.interpolate(components, keys[:2], 16, T2VRequest(""), fps=8.0, progress=False)
    assert out16.shape[0] == 17 and [c.fps for _, c in calls] == [32.0, 128.0, 128.0]
    for bad in (2, 8, 12):
        with pytest.raises(VidFusionError, match="power of 4"):
            interpolation.check_factor(bad)


def test_linear_blend_and_seam_ratio():
    keys = np.array([0, 40, 80], dtype=np.uint8).reshape(3, 1, 1, 1).repeat(3, axis=3)
    assert linear_blend(keys)[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    video = np.zeros((12, 2, 2, 3), dtype=np.uint8)
    video[:, :, :, 0] = np.arange(12)[:, None, None] * 3  # steady change 1 per transition (mean over 3 channels)
    video[8:, :, :, 0] += 30  # a jump at the join
    assert np.allclose(frame_changes(video)[:7], 1.0)
    seams = seam_ratio(video, [8], overlap=1)
    assert seams["border_change"] == pytest.approx((1 + 11) / 2) and seams["inside_change"] == pytest.approx(1.0)


def test_start_frames_are_noised_to_the_start_timestep_and_only_the_steps_below_run():
    """SDEdit start: the model first sees the start video's scaled latents noised with the seed's noise to exactly
    the start timestep, and is called only at the grid's timesteps from there; a timestep off the grid is refused."""
    from vidfusion.diffusion.prediction import add_noise
    from vidfusion.diffusion.schedule import alphas_cumprod

    components = context_components()
    request = T2VRequest("a red circle", num_steps=4, seed=3)  # grid 999, 749, 499, 249
    keys = torch.rand(3, 3, 64, 64) * 2 - 1
    frames = torch.zeros(9, 3, 64, 64)
    frames[::4] = keys
    known = torch.zeros(9, dtype=torch.bool)
    known[::4] = True
    blend = interpolation.linear_blend(keys)
    seen = []

    def record(model_fn):
        def wrapped(x, c, t):
            seen.append((int(t[0]), x[:1].clone()))
            return model_fn(x, c, t)
        return wrapped

    context = Context(frames, known, 32.0, start_frames=blend, start_timestep=499)
    generate_with_context(components, request, context, progress=False, wrap_model_fn=record)
    assert [t for t, _ in seen] == [499, 249]
    vae = components.vae
    z = vae.encode(blend.transpose(0, 1)[None]).mode() * vae.config.scaling_factor
    noise = initial_noise((1, 3, vae.config.latent_channels, 8, 8), torch.Generator().manual_seed(3), "cpu",
                          torch.float32)
    expected = add_noise(alphas_cumprod(components.schedule), z.permute(0, 2, 1, 3, 4), noise, 499)
    c = vae.config.latent_channels
    torch.testing.assert_close(seen[0][1][:, :, :c], expected, atol=1e-5, rtol=0)  # [noisy, context, mask]

    with pytest.raises(VidFusionError, match="not on the 4-step grid"):
        generate_with_context(components, request, dataclasses.replace(context, start_timestep=500), progress=False)
    with pytest.raises(VidFusionError, match="start frames have shape"):
        generate_with_context(components, request, dataclasses.replace(context, start_frames=blend[:5]),
                              progress=False)


def test_interpolation_blend_start_gives_each_window_its_keys_blend_and_a_grid_timestep(monkeypatch):
    calls = []
    monkeypatch.setattr(interpolation, "generate_with_context", fake_generator(calls))
    components = context_components()
    keys = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 3, 64, 64).clone()
    interpolation.interpolate(components, keys, 4, T2VRequest("", num_steps=4), fps=8.0, progress=False,
                              blend_start=600)
    assert len(calls) == 2 and all(c.start_timestep == 499 for _, c in calls)  # first grid timestep <= 600
    torch.testing.assert_close(calls[1][1].start_frames[:, 0, 0, 0], torch.linspace(0, 1, 9))  # keys 2-4 blended
    assert interpolation.linear_blend(keys[:2])[1:4, 0, 0, 0].tolist() == pytest.approx([-0.875, -0.75, -0.625])
    with pytest.raises(VidFusionError, match="is not a timestep"):
        interpolation.interpolate(components, keys, 4, T2VRequest("", num_steps=4), fps=8.0, progress=False,
                                  blend_start=1000)


def test_moving_psnr_counts_only_the_marked_pixels():
    from vidfusion.evaluation.context_eval import moving_psnr

    truth = np.zeros((2, 4, 4, 3), dtype=np.float64)
    video = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    video[:, :2] = 10  # error 10 on the top half ...
    video[:, 2:] = 200  # ... and a large error elsewhere, which the mask leaves out
    moving = np.zeros((2, 4, 4, 1), dtype=bool)
    moving[:, :2] = True
    assert moving_psnr(video, truth, moving) == pytest.approx(10 * np.log10(255.0**2 / 100.0))
