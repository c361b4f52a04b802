"""Procedural world: determinism, time parameterisation, geometry, held-out splits, and the caption grammar."""

import numpy as np
import pytest

from vidfusion.data import world
from vidfusion.data.world import (
    HELDOUT_PAIRS,
    BackgroundSpec,
    ObjectSpec,
    SceneSpec,
    eval_split,
    is_train_legal,
    object_state,
    parse_prompt,
    prompt_attributes,
    render,
    sample,
    scene_and_caption,
    train_stream,
    uses_heldout_phrasing,
)
from vidfusion.errors import VidFusionError


def _key(group: dict) -> tuple:
    return group["colour"], group["shape"], group["motion"], group["count"]


def test_samples_are_deterministic_and_distinct():
    a, b = sample(7, "train"), sample(7, "train")
    assert a.video.dtype == np.uint8 and a.video.shape == (17, 128, 128, 3)
    assert a.video.tobytes() == b.video.tobytes() and a.caption == b.caption and a.scene == b.scene
    for other in (sample(8, "train"), sample(7, "train", seed=1), sample(7, "val")):
        assert other.video.tobytes() != a.video.tobytes()
    # The stream and the evaluation splits are views of the same indexed samples.
    streamed = [s for _, s in zip(range(3), train_stream(seed=0, start=6))]
    assert streamed[1].video.tobytes() == a.video.tobytes() and streamed[1].index == 7
    assert eval_split("heldout", 3)[2].video.tobytes() == sample(2, "heldout").video.tobytes()


def test_frame_counts_share_one_clip_timeline():
    scene, _, _ = scene_and_caption(11, "train")
    v17, v33, v49 = (render(scene, n, 64, 96) for n in (17, 33, 49))
    assert v17.shape == (17, 64, 96, 3) and v49.shape == (49, 64, 96, 3)
    # t = i / (T - 1): every second frame of 33 and every third of 49 are the 17-frame clip's frames.
    np.testing.assert_array_equal(v33[::2], v17)
    np.testing.assert_array_equal(v49[::3], v17)


def test_motions_are_large_and_objects_stay_inside_and_apart():
    t = np.linspace(0, 1, 65)
    for i in range(300):
        scene, _, _ = scene_and_caption(i, "val")
        tracks = []
        for obj in scene.objects:
            x, y, scale, angle = object_state(obj, t)
            reach = obj.radius * world.SHAPE_EXTENT[obj.shape] * scale
            for centre in (x, y):
                assert np.all(centre - reach >= 0) and np.all(centre + reach <= 1)
            moved = np.hypot(x - x[0], y - y[0]).max()
            if obj.motion in world.DIRECTIONS or obj.motion == "bounce":
                assert moved >= 0.3, (obj.motion, moved)
            else:
                assert moved == 0.0
            if obj.motion == "rotate":
                assert obj.shape != "circle" and abs(angle[-1]) >= 100
            tracks.append((x, y, reach))
        for j, (x1, y1, r1) in enumerate(tracks):
            for x2, y2, r2 in tracks[j + 1:]:
                assert np.all(np.hypot(x1 - x2, y1 - y2) > r1 + r2)
        if scene.pan is not None:
            assert all(o.motion != "still" for o in scene.objects)
        colours = [o.colour for o in scene.objects]
        assert len(scene.groups()) == len(set(colours))


def test_pan_scrolls_background_against_camera():
    background = BackgroundSpec("stripes", "mixed", ((30, 30, 34), (200, 198, 190)), angle=20.0, period=0.15)
    scene = SceneSpec(objects=(), background=background, pan="right", pan_travel=0.25)
    video = render(scene, 17, 64, 128)
    shift = 32  # 0.25 of 128 px: the camera moved right, so content moved left on screen
    np.testing.assert_array_equal(video[-1][:, : 128 - shift], video[0][:, shift:])
    assert not np.array_equal(video[-1], video[0])
    left = render(SceneSpec((), background, pan="left", pan_travel=0.25), 17, 64, 128)
    np.testing.assert_array_equal(left[0][:, : 128 - shift], left[-1][:, shift:])


def test_heldout_pairs_and_phrasings_never_reach_training():
    for i in range(2000):
        scene, text, heldout_phrasing = scene_and_caption(i, "train")
        assert is_train_legal(scene) and not heldout_phrasing
        assert not uses_heldout_phrasing(text), text
        parsed = parse_prompt(text)
        assert all((g["colour"], g["shape"]) not in HELDOUT_PAIRS for g in parsed["objects"]), text
    for i in range(300):
        scene, text, _ = scene_and_caption(i, "val")
        assert is_train_legal(scene) and not uses_heldout_phrasing(text)


def test_heldout_split_cycles_through_novel_pairs_and_phrasings():
    kinds = set()
    for i in range(300):
        scene, text, heldout_phrasing = scene_and_caption(i, "heldout")
        novel_pair = not is_train_legal(scene)
        assert novel_pair == (i % 3 != 1)
        assert heldout_phrasing == (i % 3 != 0) == uses_heldout_phrasing(text), text
        if novel_pair:
            assert (scene.objects[0].colour, scene.objects[0].shape) in HELDOUT_PAIRS
        kinds.add((novel_pair, heldout_phrasing))
    assert kinds == {(True, False), (False, True), (True, True)}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_captions_parse_back_to_scene_attributes(split):
    for i in range(600):
        scene, text, _ = scene_and_caption(i, split)
        truth, parsed = prompt_attributes(scene), parse_prompt(text)
        assert parsed is not None, text
        assert sorted(map(_key, parsed["objects"])) == sorted(map(_key, truth["objects"])), text
        assert parsed["num_objects"] == truth["num_objects"] == len(scene.objects), text
        sizes = {g["colour"]: g["size"] for g in truth["objects"]}
        for g in parsed["objects"]:
            assert g["size"] in (None, sizes[g["colour"]]), text
        assert parsed["pan"] in (None, scene.pan), text


def test_parse_prompt_reads_free_text():
    got = parse_prompt("A crimson ball slides rightward over a striped background.")
    assert (got["colour"], got["shape"], got["motion"], got["count"]) == ("red", "circle", "right", 1)
    got = parse_prompt("two objects: a red circle moving left and a blue square moving up")
    assert [_key(g) for g in got["objects"]] == [("red", "circle", "left", 1), ("blue", "square", "up", 1)]
    assert got["num_objects"] == 2
    got = parse_prompt("three tiny pink stars bouncing up and down")
    assert (_key(got), got["size"]) == (("magenta", "star", "bounce", 3), "small")
    got = parse_prompt("a square in cobalt twirls")
    assert _key(got) == ("blue", "square", "rotate", 1)
    got = parse_prompt("a green triangle drifts toward the upper left as the camera pans right")
    assert (got["motion"], got["pan"]) == ("up-left", "right")
    assert parse_prompt("a lime cross does not move")["motion"] == "still"
    assert parse_prompt("a red circle")["motion"] is None
    assert parse_prompt("a sunset over the sea") is None


def test_user_errors_name_the_fix():
    with pytest.raises(VidFusionError, match="use one of train, val, heldout"):
        sample(0, "test")
    with pytest.raises(VidFusionError, match="'val' or 'heldout'"):
        eval_split("train", 2)
    with pytest.raises(VidFusionError, match="num_frames=0"):
        render(scene_and_caption(0)[0], num_frames=0)
    obj = ObjectSpec("circle", "red", "small", "still", (0.5, 0.5), 0.075)
    assert render(SceneSpec((obj,), BackgroundSpec("solid", "dark", ((10, 10, 10),) * 2)), 1, 32, 32).shape == (
        1, 32, 32, 3)


def test_object_masks_are_exactly_the_pixels_the_objects_change():
    """The footprint of the anti-aliased shapes: every pixel a render changes against the same scene without objects
    is in the mask, and the mask holds almost nothing else (pixels where the shape's colour equals the background's
    are the only allowed extras), also for a high-frame-rate window."""
    import dataclasses

    for index in range(12):
        scene, _, _ = world.scene_and_caption(index, "train", 3)
        times = np.linspace(0.2, 0.45, 9) if index % 2 else None
        video = world.render(scene, 9, 64, 96, times=times).astype(int)
        empty = world.render(dataclasses.replace(scene, objects=()), 9, 64, 96, times=times).astype(int)
        changed = np.abs(video - empty).max(axis=-1) > 0
        mask = world.object_masks(scene, 9, 64, 96, times=times)
        assert mask.shape == changed.shape and mask.dtype == bool
        assert not (changed & ~mask).any()
        assert (mask & ~changed).sum() <= 0.01 * mask.sum()
    still = world.object_masks(world.scene_and_caption(0, "train", 3)[0], 5, 64, 64)
    assert 0 < still.mean() < 0.5
