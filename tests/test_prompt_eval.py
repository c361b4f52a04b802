"""Adherence evaluation plumbing: a "model" that draws the prompt's own scene scores near 1, a blank one scores 0.

The generation function the module calls is replaced by stubs, so these tests check the prompt -> scene ->
attributes -> score path (and its JSON output) without any network or sampling cost.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vidfusion.data.world import render, scene_and_caption
from vidfusion.errors import VidFusionError
from vidfusion.evaluation import prompt_eval
from vidfusion.evaluation.adherence import format_confusion

N = 30
SPLIT = "heldout"


def _as_model_output(video_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, H, W] in [-1, 1], as text_to_video returns."""
    return torch.from_numpy(video_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@pytest.fixture
def calls(monkeypatch):
    """Replace generation with a render of the scene whose caption is the prompt; records every request."""
    scene_of = {}
    for i in range(N):
        scene, text, _ = scene_and_caption(i, SPLIT)
        scene_of[text] = scene
    assert len(scene_of) == N  # captions identify scenes, so the stub can look them up
    seen = []

    def ground_truth(components, request, progress=True):
        seen.append(request)
        return _as_model_output(render(scene_of[request.prompt]))

    monkeypatch.setattr(prompt_eval, "text_to_video", ground_truth)
    return seen


def test_ground_truth_generator_scores_high(calls, tmp_path):
    components = SimpleNamespace(defaults={"num_steps": 7, "guidance_scale": 3.5}, path=None)
    result = prompt_eval.evaluate_adherence(components, n=N, split=SPLIT, seed=5, progress=False)
    table = result["table"]
    for attribute in ("colour", "shape", "motion", "count", "size", "all"):
        assert table[attribute]["accuracy"] >= 0.95, (attribute, table)
    assert table["colour"]["n"] == N
    # One sample per prompt, in split order, with the fixed seed and the model's tuned settings.
    assert [r.prompt for r in calls] == [scene_and_caption(i, SPLIT)[1] for i in range(N)]
    assert {(r.seed, r.num_steps, r.guidance_scale) for r in calls} == {(5, 7, 3.5)}
    row = result["rows"][3]
    assert row["prompt"] == calls[3].prompt and row["index"] == 3
    assert row["attributes"]["colour"] == scene_and_caption(3, SPLIT)[0].objects[0].colour
    # Ground truth fills the confusion table's diagonal: one count per object group that asks for a shape.
    confusion = result["shape_confusion"]
    groups = [g for r in result["rows"] for g in r["attributes"]["objects"]]
    assert sum(sum(row.values()) for row in confusion.values()) == len(groups)
    for asked, row in confusion.items():
        assert row[asked] >= 0.95 * sum(row.values()), (asked, row)
        assert sum(row.values()) == sum(g["shape"] == asked for g in groups)
    json.loads(json.dumps(result))  # the CLI writes it as JSON


def test_blank_generator_scores_zero_colour(calls, monkeypatch):
    def grey(components, request, progress=True):
        calls.append(request)
        return torch.zeros(17, 3, 128, 128)  # mid-grey: no saturated pixel anywhere

    monkeypatch.setattr(prompt_eval, "text_to_video", grey)
    components = SimpleNamespace(defaults={}, path=None)
    result = prompt_eval.evaluate_adherence(components, n=10, split="val", num_steps=3, guidance=1.0, progress=False)
    assert result["table"]["colour"] == {"accuracy": 0.0, "n": 10}
    assert result["table"]["all"]["accuracy"] == 0.0
    # No colour found: every asked shape is read as "none".
    assert all(row["none"] == sum(row.values()) for row in result["shape_confusion"].values())
    assert format_confusion(result["shape_confusion"]).splitlines()[0].split()[-1] == "none"
    assert {(r.num_steps, r.guidance_scale, r.seed) for r in calls} == {(3, 1.0, 0)}  # explicit settings win


def test_bad_arguments():
    components = SimpleNamespace(defaults={}, path=None)
    with pytest.raises(VidFusionError, match="split"):
        prompt_eval.evaluate_adherence(components, n=2, split="train")
    with pytest.raises(VidFusionError, match="at least 1"):
        prompt_eval.evaluate_adherence(components, n=0)
