"""Prompt-adherence evaluation of a text-to-video model on a fixed split of the procedural world.

Each of the split's first `n` captions is a prompt; the model makes one video per prompt and `adherence.score_video`
checks it against the attributes of the scene the caption was written from (`world.prompt_attributes`), not against
what a parser reads back from the text, so a parsing slip can never make the model look better or worse.

Every prompt is sampled with the same seed: the initial noise is then identical across prompts, and differences
between rows come from the prompts alone. Scenes are never rendered here; only their captions and attributes are used.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from vidfusion.data.world import prompt_attributes, scene_and_caption
from vidfusion.errors import VidFusionError
from vidfusion.evaluation.adherence import score_video, shape_confusion, summarise
from vidfusion.io.pretrained import Components
from vidfusion.io.video import to_uint8_frames
from vidfusion.pipelines.text_to_video import T2VRequest, sampling_default, text_to_video

EVAL_SPLITS = ("val", "heldout")


def evaluate_adherence(
    components: Components,
    n: int = 200,
    split: str = "heldout",
    seed: int = 0,
    num_steps: int | None = None,
    guidance: float | None = None,
    progress: bool = True,
) -> dict:
    """Generate one video per caption of `split[:n]` and score it.

    Returns {"table": per-attribute {"accuracy", "n"} (as `adherence.summarise`), "shape_confusion": asked shape ->
    shape read -> count (`adherence.shape_confusion`), "rows": one per prompt with
    index, prompt, heldout_phrasing, attributes and scores, "settings": what was run}. `num_steps` and `guidance`
    default to the model's tuned values (`components.defaults`).
    """
    if split not in EVAL_SPLITS:
        raise VidFusionError(f"unknown evaluation split {split!r}; use one of {', '.join(EVAL_SPLITS)}")
    if n < 1:
        raise VidFusionError(f"-n {n} asks for no prompts; use at least 1 (e.g. -n 200)")
    num_steps = sampling_default(components.defaults, "num_steps", num_steps)
    guidance = sampling_default(components.defaults, "guidance_scale", guidance)

    rows = []
    for index in tqdm(range(n), desc=f"adherence ({split})", disable=not progress, unit="prompt"):
        scene, prompt, heldout_phrasing = scene_and_caption(index, split)
        attributes = prompt_attributes(scene)
        request = T2VRequest(prompt, num_steps=num_steps, guidance_scale=guidance, seed=seed)
        video = to_uint8_frames(text_to_video(components, request, progress=False))
        rows.append({"index": index, "prompt": prompt, "heldout_phrasing": heldout_phrasing,
                     "attributes": attributes, "scores": score_video(video, attributes)})
    settings = {"model": str(components.path) if getattr(components, "path", None) else None, "split": split,
                "n": n, "seed": seed, "num_steps": num_steps, "guidance_scale": guidance}
    confusion = shape_confusion([r["scores"] for r in rows], [r["attributes"] for r in rows])
    return {"table": summarise(r["scores"] for r in rows), "shape_confusion": confusion, "rows": rows,
            "settings": settings}
