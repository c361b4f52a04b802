"""Caption stage: a plug-in that runs a local vision-language model on each clip's middle frame.

With `captions.model = ""` (the default) every caption is empty and the report says so: VidFusion ships no
captioner, and inventing captions from file names would teach a model nonsense. With a folder, transformers'
"image-text-to-text" pipeline loads it offline (any chat VLM it supports: SmolVLM, Qwen2-VL, LLaVA, ...) and
answers `prompt` about the frame. `load_captioner` is the one seam: it returns a function from an RGB frame to a
caption, so another captioner needs only a replacement for it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from vidfusion.data.curation.config import CaptionConfig
from vidfusion.data.curation.decode import iter_frames

Captioner = Callable[[np.ndarray], str]


@functools.cache
def load_captioner(folder: str, prompt: str, max_new_tokens: int) -> Captioner:
    from PIL import Image
    from transformers import pipeline

    generate = pipeline("image-text-to-text", model=folder, model_kwargs={"local_files_only": True})

    def caption(rgb: np.ndarray) -> str:
        messages = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(rgb)},
                                                 {"type": "text", "text": prompt}]}]
        out = generate(text=messages, max_new_tokens=max_new_tokens, return_full_text=False)
        return str(out[0]["generated_text"]).strip()

    return caption


def caption_clips(path: str, clips: list[dict[str, Any]], cfg: CaptionConfig) -> list[dict[str, Any]]:
    if not cfg.model:
        return [{"caption": ""} for _ in clips]
    captioner = load_captioner(cfg.model, cfg.prompt, cfg.max_new_tokens)
    middle = {(c["start"] + c["end"]) // 2: k for k, c in enumerate(clips)}
    captions = [""] * len(clips)
    for index, rgb in iter_frames(path, set(middle), fmt="rgb24"):
        captions[middle[index]] = captioner(rgb)
    return [{"caption": text} for text in captions]
