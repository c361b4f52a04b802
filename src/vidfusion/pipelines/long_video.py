"""Long videos by prediction from context frames (Video LDM, seed 003), chunk by chunk with a masked-context model.

The model makes clips of its trained length T (17 frames). The first chunk is text-to-video (or the user's video, for
`extend`); every later chunk is generated with its first K frames known, set to the last K frames made so far, and
adds T - K new frames. K = 4s + 1 frames is exactly s + 1 whole latent frames of the causal VAE (frame 0, then 4 per
latent), i.e. the "last S latent frames" of the chunk before, re-encoded at the start of the new chunk, which is where
the model saw context in training (training/task_mix.py, "extend").

Seams: each chunk is decoded on its own, and its first K frames are the model's rendering of the context, not the
context itself. Over those K overlapping frames the output cross-fades linearly from the frames already made to the
new chunk's (weights 1/(K+1) .. K/(K+1)), so the cut between the two decodes is spread over K frames instead of one.
Carrying the causal VAE's conv cache across chunks would need one latent sequence for the whole video, which chunked
sampling does not have.

Each chunk has its own seed (seed + chunk index), so a longer video begins with the same frames as a shorter one.

Drift (opt-in, measured in docs/context.md): every chunk re-renders its context with a small bias of its own (on the
tiny model the background darkened chunk after chunk), and the next chunk inherits it. `match_colour` shifts each new
chunk's RGB channels by the difference between the frames it re-renders and its rendering of them (per-channel means
over the overlap), so the bias of one chunk is removed before the next one reads it. `context_noise` adds training's
pixel noise to the context frames (Context.noise_sigma), so the model treats them as the noisy observations it was
trained on rather than exact ones.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm.auto import tqdm

from vidfusion.errors import VidFusionError
from vidfusion.io.pretrained import Components
from vidfusion.pipelines.masked_context import Context, check_context_model, generate_with_context, generation_fps
from vidfusion.pipelines.text_to_video import T2VRequest, resolve_size

DEFAULT_CONTEXT_FRAMES = 5


def check_context_frames(context_frames: int, chunk_frames: int) -> None:
    if (context_frames - 1) % 4 or not 1 <= context_frames <= chunk_frames - 4:
        options = ", ".join(str(k) for k in range(1, chunk_frames - 3, 4))
        raise VidFusionError(f"--context-frames {context_frames} must be 4s + 1 (whole latent frames) and leave new "
                             f"frames in a {chunk_frames}-frame chunk; use one of {options}")


def chunk_count(length: int, chunk_frames: int, context_frames: int, start_frames: int = 0) -> int:
    """Chunks to generate for `length` frames (after `start_frames` given ones; 0 = the first chunk is generated)."""
    if start_frames == 0:
        return 1 + max(0, -(-(length - chunk_frames) // (chunk_frames - context_frames)))
    return max(0, -(-(length - start_frames) // (chunk_frames - context_frames)))


def cross_fade(made: torch.Tensor, chunk: torch.Tensor, overlap: int) -> torch.Tensor:
    """`made` [N, 3, H, W] and a new `chunk` whose first `overlap` frames re-render made's last ones -> the joined
    video, blending linearly over the overlap towards the chunk."""
    w = torch.arange(1, overlap + 1, dtype=made.dtype) / (overlap + 1)
    w = w.view(-1, 1, 1, 1)
    blended = (1 - w) * made[-overlap:] + w * chunk[:overlap]
    return torch.cat([made[:-overlap], blended, chunk[overlap:]])


def match_colour(made: torch.Tensor, chunk: torch.Tensor, overlap: int) -> torch.Tensor:
    """`chunk` shifted per RGB channel so that its first `overlap` frames have the mean colour of made's last ones."""
    shift = made[-overlap:].mean(dim=(0, 2, 3)) - chunk[:overlap].mean(dim=(0, 2, 3))
    return (chunk + shift.view(1, 3, 1, 1)).clamp(-1.0, 1.0)


def long_video(
    components: Components, request: T2VRequest, length: int, start: torch.Tensor | None = None,
    context_frames: int = DEFAULT_CONTEXT_FRAMES, context_scale: float = 1.0, fps: float | None = None,
    progress: bool = True, colour_match: bool = False, context_noise: float = 0.0,
) -> tuple[torch.Tensor, list[int]]:
    """A video [length, 3, H, W] in [-1, 1] (CPU, float32) and the frame indices where chunks were joined (the first
    new frame of each later chunk). `start` [N, 3, H, W] (N >= context_frames): a video to extend; its frames are kept, except that its last
    context_frames frames are cross-faded into the first new chunk like any other seam."""
    check_context_model(components, "long video generation")
    config = components.transformer.config
    chunk_frames, height, width = resolve_size(config, replace(request, num_frames=None))
    if request.num_frames not in (None, chunk_frames):
        raise VidFusionError(f"long videos are made in chunks of the model's {chunk_frames} frames; drop --frames "
                             f"and give the total as --length")
    check_context_frames(context_frames, chunk_frames)
    fps = float(fps if fps is not None else generation_fps(components))
    if start is not None:
        if start.ndim != 4 or tuple(start.shape[1:]) != (3, height, width):
            raise VidFusionError(f"the video to extend has shape {list(start.shape)}; resize it to [N, 3, {height}, "
                                 f"{width}]")
        if start.shape[0] < context_frames:
            raise VidFusionError(f"the video to extend has {start.shape[0]} frames, fewer than the {context_frames} "
                                 f"context frames; give a longer video or a smaller --context-frames")
    if length < (chunk_frames if start is None else start.shape[0] + 1):
        least = chunk_frames if start is None else start.shape[0] + 1
        raise VidFusionError(f"--length {length} is shorter than {least} frames; ask for at least {least}")

    made = None if start is None else start.float().cpu()
    chunks = chunk_count(length, chunk_frames, context_frames, 0 if start is None else start.shape[0])
    joins = []
    bar = tqdm(range(chunks), desc="chunks", disable=not progress, unit="chunk")
    for i in bar:
        chunk_request = replace(request, num_frames=chunk_frames, seed=request.seed + i)
        if made is None:
            made = generate_with_context(components, chunk_request, Context(None, None, fps), progress=False)
            continue
        frames = torch.zeros(chunk_frames, 3, height, width)
        frames[:context_frames] = made[-context_frames:]
        known = torch.zeros(chunk_frames, dtype=torch.bool)
        known[:context_frames] = True
        chunk = generate_with_context(components, chunk_request,
                                      Context(frames, known, fps, context_scale, context_noise), progress=False)
        if colour_match:
            chunk = match_colour(made, chunk, context_frames)
        joins.append(made.shape[0])
        made = cross_fade(made, chunk, context_frames)
    bar.close()
    return made[:length], [j for j in joins if j < length]
