"""Adherence checker: accurate on ground-truth renders, and failing prompts that do not match the video."""

import time

import numpy as np
import pytest

from vidfusion.data import world
from vidfusion.data.world import (
    BackgroundSpec,
    ObjectSpec,
    SceneSpec,
    parse_prompt,
    prompt_attributes,
    render,
    sample,
    scene_and_caption,
)
from vidfusion.errors import VidFusionError
from vidfusion.evaluation.adherence import (
    ATTRIBUTES,
    classify_contour,
    colour_labels,
    format_summary,
    score_video,
    summarise,
)


def _ground_truth(n_per_split: int, **size) -> list:
    return [sample(i, split, **size) for split in ("val", "heldout") for i in range(n_per_split)]


def test_checker_accuracy_on_ground_truth():
    samples = _ground_truth(60)
    scores, elapsed = [], 0.0
    for s in samples:
        start = time.perf_counter()
        scores.append(score_video(s.video, prompt_attributes(s.scene)))
        elapsed += time.perf_counter() - start
    table = summarise(scores)
    print("\n" + format_summary(table))
    for attribute in ("colour", "shape", "motion", "count", "size"):
        assert table[attribute]["accuracy"] >= 0.95, (attribute, table)
    assert table["colour"]["n"] == len(samples)
    assert elapsed / len(samples) < 0.05  # < 50 ms per 17-frame 128x128 video
    # The sample is broad enough for the accuracy to mean something.
    scenes = [s.scene for s in samples]
    assert {o.motion for sc in scenes for o in sc.objects} == set(world.MOTIONS)
    assert {o.shape for sc in scenes for o in sc.objects} == set(world.SHAPES)
    assert {sc.background.kind for sc in scenes} == set(world.BACKGROUNDS)
    assert sum(sc.pan is not None for sc in scenes) >= 10
    assert sum(len(sc.objects) > 1 for sc in scenes) >= 30
    assert sum(len(sc.groups()) > 1 for sc in scenes) >= 15


@pytest.mark.parametrize("num_frames,height,width", [(33, 128, 128), (17, 96, 160)])
def test_checker_accuracy_other_lengths_and_aspect(num_frames, height, width):
    samples = _ground_truth(20, num_frames=num_frames, height=height, width=width)
    table = summarise(score_video(s.video, prompt_attributes(s.scene)) for s in samples)
    for attribute in ("colour", "shape", "motion", "count"):
        assert table[attribute]["accuracy"] >= 0.95, (attribute, table)


def test_checker_rejects_each_wrong_attribute():
    """Swapping one attribute of the main group for a wrong value must fail that attribute."""
    rng = np.random.default_rng(0)
    wrong_scores = {a: [] for a in ATTRIBUTES}
    for s in _ground_truth(40):
        truth = prompt_attributes(s.scene)
        main = truth["objects"][0]
        used = {g["colour"] for g in truth["objects"]}
        choices = {
            "colour": [c for c in world.COLOURS if c not in used],
            "shape": [x for x in world.SHAPES if x != main["shape"]],
            "motion": [m for m in world.MOTIONS if m != main["motion"]],
            "count": [main["count"] + 1] + ([main["count"] - 1] if main["count"] > 1 else []),
            "size": [x for x in world.SIZES if x != main["size"]] if main["size"] else [],
        }
        for attribute, options in choices.items():
            if options:
                wrong = {**main, attribute: options[rng.integers(len(options))]}
                wrong_scores[attribute].append(score_video(s.video, wrong)[attribute])
    for attribute, values in wrong_scores.items():
        assert len(values) >= 30 and np.mean(values) <= 0.05, (attribute, np.mean(values))


def test_wrong_prompt_scores_low_and_right_prompt_scores_high():
    red_circle = ObjectSpec("circle", "red", "large", "right", (0.3, 0.5), 0.13, travel=0.45)
    scene = SceneSpec((red_circle,), BackgroundSpec("stripes", "light", ((200, 200, 195), (170, 172, 180))))
    video = render(scene)
    right = score_video(video, parse_prompt("a red circle moving to the right"))
    assert [right[a] for a in ("colour", "shape", "motion", "count", "all")] == [1.0] * 5
    wrong = score_video(video, parse_prompt("a blue square moving left"))
    assert [wrong[a] for a in ("colour", "shape", "motion", "count", "all")] == [0.0] * 5
    half = score_video(video, parse_prompt("a red square moving left"))
    assert (half["colour"], half["shape"], half["motion"], half["count"]) == (1.0, 0.0, 0.0, 1.0)
    two_groups = score_video(video, parse_prompt("a red ball sliding right and a green star spinning"))
    assert two_groups["colour"] == 0.5 and two_groups["all"] == 0.0
    measured = right["measurements"]["groups"][0]
    assert measured["displacement"][0] == pytest.approx(0.45, abs=0.02) and measured["size"] == "large"


def test_backgrounds_never_look_like_objects():
    for i in range(60):
        scene, _, _ = scene_and_caption(i, "val")
        empty = SceneSpec((), scene.background, pan=scene.pan or "left", pan_travel=0.3)
        assert (colour_labels(render(empty)) == -1).all(), scene.background


def test_summarise_and_input_errors():
    table = summarise([{"colour": 1.0, "shape": 0.0, "motion": None, "all": 0.0},
                       {"colour": 0.5, "shape": 1.0, "motion": 1.0, "all": 0.0}])
    assert table["colour"] == {"accuracy": 0.75, "n": 2} and table["motion"] == {"accuracy": 1.0, "n": 1}
    video = sample(0, "val").video
    with pytest.raises(VidFusionError, match="uint8 numpy array"):
        score_video(video.astype(np.float32), {"colour": "red"})
    with pytest.raises(VidFusionError, match="unknown colour 'teal'"):
        score_video(video, {"colour": "teal"})


def test_self_intersecting_contour_is_classified_not_crashed():
    # A figure-eight outline, as a blurry generated blob can produce; OpenCV's convexityDefects rejects its raw hull.
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    pts = np.stack([40 + 30 * np.sin(t), 40 + 20 * np.sin(2 * t)], axis=1).round().astype(np.int32)
    shape, features = classify_contour(pts.reshape(-1, 1, 2))
    assert shape in ("circle", "square", "triangle", "star", "cross")
    assert "solidity" in features
