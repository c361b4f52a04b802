"""Image-to-video against diffusers' CogVideoXImageToVideoPipeline, and its input errors.

Tiny random I2V checkpoints shaped like CogVideoX-5B-I2V (learned positions, 2 x latent channels) and CogVideoX1.5-5B-I2V
(patch_size_t 2, ofs embedding, inverted image-latent scale) are written by diffusers' own save_pretrained; the same
folder drives both pipelines, so any difference is ours. Compared: the image latents, every input of the transformer's
first call, the final latents and the decoded video.
"""

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from vidfusion.diffusion.schedule import COGVIDEOX_5B_SCHEDULE  # noqa: E402
from vidfusion.errors import VidFusionError  # noqa: E402
from vidfusion.io.pretrained import Components, load_pretrained  # noqa: E402
from vidfusion.models.transformer import CogVideoXTransformer, tiny_config  # noqa: E402
from vidfusion.models.vae import CogVideoXVAE, tiny_random_config  # noqa: E402
from vidfusion.pipelines.image_to_video import (  # noqa: E402
    encode_image_latents,
    image_to_video,
    image_to_video_latents,
    load_image,
    pad_image_latents,
    preprocess_image,
    scale_image_latents,
)
from vidfusion.pipelines.text_to_video import T2VRequest, decode  # noqa: E402

# The same tiny T5 as the text-to-video parity tests, so both pipelines are checked against one text encoder.
from test_pipeline import T5_DIM, tiny_t5  # noqa: E402

PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"


def randomise_(module, seed):
    """Random values in every parameter and in the learned position table (diffusers zero-initialises some layers and
    fills the table with sin-cos values, which would hide wiring bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tables = [b for name, b in module.named_buffers() if name.endswith("pos_embedding")]
        for t in [*module.parameters(), *tables]:
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def build_reference(folder, like):
    tokenizer, t5 = tiny_t5()
    t_cfg = tiny_config(like, text_embed_dim=T5_DIM, max_text_seq_length=16, sample_height=8, sample_width=8,
                        sample_frames=9)
    transformer = diffusers.CogVideoXTransformer3DModel.from_config(t_cfg.to_dict()).eval()
    randomise_(transformer, 1)
    # Scale 0.7 (not 1.0) so a missing or inverted image-latent scale shows; 1.5 divides by it.
    v_cfg = tiny_random_config(scaling_factor=0.7, invert_scale_latents=like.startswith("cogvideox1.5"))
    vae = diffusers.AutoencoderKLCogVideoX.from_config(v_cfg.to_dict()).eval()
    randomise_(vae, 2)  # random weights make the posterior's std non-trivial, so sample() vs mode() shows
    sched = diffusers.CogVideoXDDIMScheduler.from_config(COGVIDEOX_5B_SCHEDULE.to_dict("CogVideoXDDIMScheduler"))
    pipe = diffusers.CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=t5, vae=vae,
                                                   transformer=transformer, scheduler=sched)
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2v")
    for like in ("cogvideox-5b-i2v", "cogvideox1.5-5b-i2v"):
        build_reference(root / like, like)
    return root


def sample_image(h=40, w=56, seed=0):
    """A smooth random picture (not the target size, so the Lanczos resize is exercised)."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def run_reference(pipe, image, sampler, guidance, dynamic, **kwargs):
    """Run diffusers, recording the prepared image latents, the first transformer call and the final latents."""
    if sampler == "dpm":
        pipe.scheduler = diffusers.CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    seen = {}
    prepare = pipe.prepare_latents

    def spy_prepare(*args, **kw):
        seen["noise"], seen["image_latents"] = out = prepare(*args, **kw)
        return out

    def spy_transformer(module, args, kw):
        seen.setdefault("step0", {k: kw[k] for k in ("hidden_states", "encoder_hidden_states", "timestep", "ofs")})

    def on_step_end(pipe_, i, t, tensors):
        seen["latents"] = tensors["latents"]
        return {}

    pipe.prepare_latents = spy_prepare
    hook = pipe.transformer.register_forward_pre_hook(spy_transformer, with_kwargs=True)
    try:
        video = pipe(Image.fromarray(image), PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4,
                     guidance_scale=guidance, use_dynamic_cfg=dynamic, max_sequence_length=16,
                     generator=torch.Generator().manual_seed(5), output_type="pt", callback_on_step_end=on_step_end,
                     **kwargs).frames[0]
    finally:
        hook.remove()
        del pipe.prepare_latents
    return video, seen


def run_ours(components, image, request):
    seen = {}

    def spy(module, args, kw):
        seen.setdefault("step0", (args, kw))

    hook = components.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        latents, extra = image_to_video_latents(components, request, image, progress=False)
    finally:
        hook.remove()
    video = decode(components, latents, extra)[0].transpose(0, 1)  # what image_to_video returns (checked below)
    return latents, extra, video, seen


CASES = [
    # like, sampler, guidance, dynamic CFG, frames (5B-I2V: the table's 9 frames; 1.5: 9 frames = 3 latents, odd)
    ("cogvideox-5b-i2v", "ddim", 6.0, False),
    ("cogvideox-5b-i2v", "dpm", 4.0, True),
    ("cogvideox1.5-5b-i2v", "ddim", 6.0, False),
    ("cogvideox1.5-5b-i2v", "dpm", 1.0, False),
]


@pytest.mark.parametrize("like,sampler,guidance,dynamic", CASES)
def test_image_to_video_matches_diffusers(folders, like, sampler, guidance, dynamic):
    folder = folders / like
    pipe = diffusers.CogVideoXImageToVideoPipeline.from_pretrained(folder)
    image = sample_image()
    ref_video, ref = run_reference(pipe, image, sampler, guidance, dynamic, num_frames=9, height=64, width=64)

    ours = load_pretrained(folder)
    request = T2VRequest(PROMPT, negative_prompt=NEGATIVE, num_frames=9, height=64, width=64, num_steps=4,
                         guidance_scale=guidance, dynamic_cfg=dynamic, sampler=sampler, seed=5)
    latents, extra, video, seen = run_ours(ours, image, request)
    (x0, context0, t0), kw0 = seen["step0"]

    is15 = like.startswith("cogvideox1.5")
    n_latents = 4 if is15 else 3  # 1.5: 3 latents + 1 sampled in front for patch_size_t = 2
    assert extra == (1 if is15 else 0)
    batch = 2 if guidance > 1 else 1
    assert x0.shape == ref["step0"]["hidden_states"].shape == (batch, n_latents, 8, 8, 8)

    # image latents: [image, zeros...] in both halves of the guided batch
    ref_image = ref["image_latents"]
    assert ref_image.shape == (1, n_latents, 4, 8, 8)
    assert ref_image[:, 1:].abs().max() == 0 and ref_image[:, 0].abs().max() > 0.1
    for half in x0[:, :, 4:]:
        assert (half - ref_image[0]).abs().max() < 1e-4

    # every input of the first transformer call
    assert (x0 - ref["step0"]["hidden_states"]).abs().max() < 1e-4
    assert (context0 - ref["step0"]["encoder_hidden_states"]).abs().max() < 1e-4
    assert torch.equal(t0.long(), ref["step0"]["timestep"].long())
    if is15:
        assert float(kw0["ofs"]) == float(ref["step0"]["ofs"]) == 2.0
    else:
        assert kw0.get("ofs") is None and ref["step0"]["ofs"] is None

    # final latents (before the front frame is dropped) and the decoded video
    assert latents.shape == ref["latents"].shape
    assert (latents - ref["latents"]).abs().max() < 1e-4
    assert video.shape == ref_video.shape == (9, 3, 64, 64)
    assert (video / 2 + 0.5 - ref_video).abs().max() < 1e-4
    if (sampler, guidance) == ("ddim", 6.0):  # the one-call API gives the same video (once per model: it samples again)
        assert torch.equal(image_to_video(ours, request, image, progress=False), video)


def test_image_latents_follow_the_checkpoint_scale(folders):
    """5B-I2V multiplies by scaling_factor, 1.5 divides; the sample comes from the generator (not the mode)."""
    image = preprocess_image(sample_image(), 64, 64)
    for like, factor in (("cogvideox-5b-i2v", 0.7), ("cogvideox1.5-5b-i2v", 1 / 0.7)):
        vae = load_pretrained(folders / like, text_encoder=False).vae
        posterior = vae.encode(image[:, :, None])
        z = encode_image_latents(vae, image, torch.Generator().manual_seed(1))
        expected = posterior.sample(torch.Generator().manual_seed(1)).permute(0, 2, 1, 3, 4) * factor
        assert torch.allclose(z, expected, atol=1e-6)
        assert (z - posterior.mode().permute(0, 2, 1, 3, 4) * factor).abs().max() > 1e-3
        padded = pad_image_latents(z, 5)
        assert padded.shape == (1, 5, 4, 8, 8) and torch.equal(padded[:, :1], z) and padded[:, 1:].abs().max() == 0
    assert torch.equal(scale_image_latents(torch.ones(1), tiny_random_config(scaling_factor=0.5)), torch.tensor([0.5]))


def test_preprocess_is_lanczos_to_minus_one_one():
    image = sample_image()
    x = preprocess_image(image, 32, 48)
    want = np.asarray(Image.fromarray(image).resize((48, 32), Image.LANCZOS)).astype(np.float32) / 127.5 - 1
    assert x.shape == (1, 3, 32, 48)
    assert np.abs(x[0].permute(1, 2, 0).numpy() - want).max() < 1e-6


def test_image_inputs_path_pil_array_agree(tmp_path):
    image = sample_image()
    Image.fromarray(image).save(tmp_path / "in.png")
    assert np.array_equal(load_image(tmp_path / "in.png"), image)
    assert np.array_equal(load_image(str(tmp_path / "in.png")), image)
    assert np.array_equal(load_image(Image.fromarray(image).convert("RGBA")), image)


def tiny_components(like):
    t_cfg = tiny_config(like, sample_height=8, sample_width=8, sample_frames=9)
    return Components(CogVideoXTransformer(t_cfg).eval(), CogVideoXVAE(tiny_random_config()).eval(), None,
                      COGVIDEOX_5B_SCHEDULE)


def error_of(components, image, **request):
    with pytest.raises(VidFusionError) as info:
        image_to_video(components, T2VRequest("a red circle", num_steps=1, **request), image, progress=False)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_errors_name_problem_and_fix(tmp_path):
    i2v, image = tiny_components("cogvideox-5b-i2v"), sample_image()

    message = error_of(tiny_components("cogvideox-5b"), image)
    assert "not an image-to-video model" in message and "-I2V checkpoint" in message

    fake = tmp_path / "photo.png"
    fake.write_text("not a picture")
    assert "cannot read" in error_of(i2v, fake) and "PNG" in error_of(i2v, fake)
    assert "not found" in error_of(i2v, tmp_path / "missing.png")
    assert "uint8 RGB [H, W, 3]" in error_of(i2v, image.astype(np.float32))
    assert "uint8 RGB [H, W, 3]" in error_of(i2v, image[..., :2])
    assert "not an image" in error_of(i2v, [1, 2, 3])

    assert "4k+1" in error_of(i2v, image, num_frames=10)
    message = error_of(i2v, image, num_frames=13)  # the learned table holds 3 latent frames = 9 frames
    assert "at most 9 frames" in message
    message = error_of(i2v, image, height=96, width=64)
    assert "--height 64 --width 64" in message


def test_freeinit_runs_image_to_video_passes(folders):
    """FreeInit with one pass is the plain I2V sampler bit for bit; more passes are seeded and change the result."""
    from vidfusion.diffusion.freeinit import FreeInitSettings

    i2v = load_pretrained(folders / "cogvideox1.5-5b-i2v")
    image = sample_image()

    def run(freeinit):
        request = T2VRequest("a cat", num_frames=9, height=64, width=64, num_steps=3, seed=0, sampler="dpm",
                             freeinit=freeinit)
        return image_to_video_latents(i2v, request, image, progress=False)[0]

    plain = run(None)
    assert torch.equal(run(FreeInitSettings(passes=1)), plain)
    two = run(FreeInitSettings(passes=2))
    assert torch.equal(run(FreeInitSettings(passes=2)), two) and not torch.allclose(two, plain, atol=1e-3)
