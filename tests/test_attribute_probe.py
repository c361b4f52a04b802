"""The attribute probe (training/attribute_probe.py): its targets follow the transformer's token grid and the world's
objects, its loss is the soft cross-entropy, its gradient reaches only the blocks it reads, and a trainer run with it
resumes bit for bit and exports a plain transformer."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidfusion.data.world import COLOURS, MOTIONS, PALETTE, SHAPES, object_id_maps, object_masks, sample
from vidfusion.diffusion.schedule import COGVIDEOX_5B_SCHEDULE, alphas_cumprod
from vidfusion.errors import VidFusionError
from vidfusion.io.pretrained import load_pretrained
from vidfusion.models.transformer import CogVideoXTransformer, tiny_config
from vidfusion.models.vae import CogVideoXVAE, tiny_random_config
from vidfusion.training import checkpointing as ckpt
from vidfusion.training.attribute_probe import (
    AttributeHead,
    BlockOutput,
    class_targets,
    object_classes,
    probe_loss,
    token_fractions,
)
from vidfusion.training.config import DiTTrainConfig, load_config

SMALL_DIT = dict(device="cpu", batch_size=2, num_frames=9, height=32, width=32, num_workers=0, log_every=1,
                 warmup_steps=1, progress=False, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                 time_embed_dim=16, max_text_seq_length=8, sample_steps=2,
                 sample_prompts='["a red circle moving right"]')


def test_token_fractions_follow_the_causal_token_grid():
    ids = np.zeros((9, 32, 32), dtype=np.uint8)
    ids[0, 0:8, 0:16] = 1  # frame 0 is latent frame 0 alone: half of token (0, 0, 0)
    ids[6, 16:32, 16:32] = 2  # frame 6 is one of latent frame 2's four (5-8): a quarter of token (2, 1, 1)
    ids[1:5, 0:16, 16:32] = 3  # frames 1-4 all: the whole of token (1, 0, 1)
    out = token_fractions(ids, temporal=4, cell=16)
    assert out.shape == (3, 3, 2, 2)
    expected = np.zeros_like(out)
    expected[0, 0, 0, 0], expected[1, 2, 1, 1], expected[2, 1, 0, 1] = 0.5, 0.25, 1.0
    np.testing.assert_allclose(out, expected)
    with pytest.raises(VidFusionError, match="4k\\+1"):
        token_fractions(ids[:8], temporal=4, cell=16)


def test_object_id_maps_name_each_object_where_it_is_drawn():
    """Each id marks pixels of its own object's colour in the render, inside the object footprint."""
    for index in range(6):
        s = sample(index, "val", num_frames=9, height=64, width=64)
        ids = object_id_maps(s.scene, 9, 64, 64)
        assert ids.max() == len(s.scene.objects)
        outside = (ids > 0)[~object_masks(s.scene, 9, 64, 64)].sum()
        assert outside <= 0.002 * (ids > 0).sum()  # a pixel-centre rule against an anti-aliased footprint
        for k, obj in enumerate(s.scene.objects):
            pixels = s.video[ids == k + 1].astype(float)
            assert len(pixels) > 20
            assert np.abs(np.median(pixels, axis=0) - PALETTE[obj.colour]).max() < 25
        classes = object_classes(s.scene)
        first = s.scene.objects[0]
        assert classes[0].tolist() == [SHAPES.index(first.shape), COLOURS.index(first.colour),
                                       MOTIONS.index(first.motion)]
        assert (classes[len(s.scene.objects):] == -1).all()


def test_class_targets_and_loss_by_hand():
    fractions = torch.zeros(1, 3, 1, 1, 2)
    fractions[0, 0, 0, 0, 0] = 0.75  # token 0: three quarters object 0 (a star), the rest background
    fractions[0, 1, 0, 0, 1] = 0.5  # token 1: half object 1 (a circle)
    classes = torch.tensor([[[SHAPES.index("star"), 0, 1], [SHAPES.index("circle"), 2, 3], [-1, -1, -1]]])
    targets = class_targets(fractions, classes)
    shape = targets["shape"][0]
    assert shape.shape == (2, 1 + len(SHAPES))
    torch.testing.assert_close(shape.sum(-1), torch.ones(2))
    assert shape[0, 0] == 0.25 and shape[0, 1 + SHAPES.index("star")] == 0.75
    assert shape[1, 0] == 0.5 and shape[1, 1 + SHAPES.index("circle")] == 0.5
    assert targets["motion"][0, 1, 1 + 3] == 0.5 and targets["colour"][0, 0, 1] == 0.75

    torch.manual_seed(0)
    head = AttributeHead(8, 16)
    tokens = torch.randn(1, 2, 8)
    out = probe_loss(head, tokens, fractions, classes, object_weight=3.0)
    logits = head(tokens)
    by_hand = 0.0
    for name, target in targets.items():
        ce = -(target * F.log_softmax(logits[name], -1)).sum(-1)[0]
        by_hand += (4 * ce[0] + 4 * ce[1]) / 8  # both tokens touch an object: weight 1 + 3 each
        torch.testing.assert_close(out.metrics[f"probe/{name}_loss"], ((4 * ce).sum() / 8).detach())
    torch.testing.assert_close(out.loss, by_hand)
    # Only token 0 is mostly one object; its accuracy is whether the head's argmax is the star.
    right = logits["shape"][0, 0].argmax() == 1 + SHAPES.index("star")
    assert out.metrics["probe/shape_acc"].item() == float(right)


def test_probe_gradient_reaches_only_the_blocks_it_reads():
    torch.manual_seed(0)
    model = CogVideoXTransformer(tiny_config("cogvideox-5b", in_channels=4, out_channels=4, text_embed_dim=8,
                                             max_text_seq_length=6, sample_height=8, sample_width=8,
                                             sample_frames=5, num_layers=3))
    block = BlockOutput(model.transformer_blocks[0])
    head = AttributeHead(model.config.inner_dim, 16)
    x, text = torch.randn(2, 2, 4, 8, 8), torch.randn(2, 6, 8)
    model(x, text, torch.tensor([10, 900]))
    fractions = torch.rand(2, 3, 2, 4, 4) / 3
    classes = torch.tensor([[[0, 1, 2], [1, 2, 3], [2, 3, 4]]] * 2)
    probe_loss(head, block.take(), fractions, classes, 4.0).loss.backward()
    assert model.transformer_blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.transformer_blocks[1].parameters())
    assert model.proj_out.weight.grad is None
    with pytest.raises(VidFusionError, match="did not run"):
        block.take()


def test_trainer_with_probe_resumes_bit_identically_and_exports_a_plain_transformer(tmp_path):
    from vidfusion.training.train_dit import Probe, train, train_step

    torch.manual_seed(0)
    vae = CogVideoXVAE(tiny_random_config(sample_height=32, sample_width=32))
    vae_path = str(ckpt.write_component(tmp_path / "vae", vae.state_dict(), vae.config.to_dict()))
    common = dict(SMALL_DIT, vae_path=vae_path, steps=3, ckpt_every=3, sample_every=100, attribute_loss=0.5,
                  attribute_layer=1, object_weight=2.0, task_mix="0.4,0.2,0,0.4", extend_frames="5")
    straight = train(load_config(DiTTrainConfig, None, dict(common, out_dir=str(tmp_path / "a"))))
    split_dir = tmp_path / "b"
    train(load_config(DiTTrainConfig, None, dict(common, out_dir=str(split_dir), max_minutes=1e-9)))
    train(load_config(DiTTrainConfig, None, dict(common, out_dir=str(split_dir))))
    a, b = tmp_path / "a" / "checkpoints" / "step_0000003", split_dir / "checkpoints" / "step_0000003"
    for part in ("model", "ema", "optimizer", "attribute_head", "head_optimizer"):
        ta, tb = ckpt.load_part(a, part), ckpt.load_part(b, part)
        assert ta.keys() == tb.keys() and ta
        assert all(torch.equal(ta[k], tb[k]) for k in ta), part
    log = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert '"probe/shape_loss"' in log and '"probe/motion_loss"' in log
    exported = load_pretrained(straight).transformer
    assert exported.config.num_layers == 2  # the head is not part of the model folder

    # The probe's term adds to the plain step's loss and changes the update; the plain step is unchanged.
    cfg = load_config(DiTTrainConfig, None, dict(common, out_dir=str(tmp_path / "c")))
    model = CogVideoXTransformer(tiny_config("cogvideox-5b", in_channels=4, out_channels=4, text_embed_dim=8,
                                             max_text_seq_length=6, sample_height=4, sample_width=4,
                                             sample_frames=9, num_layers=2))
    x0, context = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 6, 8)
    targets = (torch.rand(2, 3, 3, 2, 2) / 3, torch.tensor([[[0, 1, 2], [1, 2, 3], [-1, -1, -1]]] * 2))
    ab = alphas_cumprod(COGVIDEOX_5B_SCHEDULE)

    def step(with_probe):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        probe = None
        if with_probe:
            head = AttributeHead(m.config.inner_dim, 16)
            probe = Probe(head, torch.optim.SGD(head.parameters(), lr=0.1), BlockOutput(m.transformer_blocks[0]))
        out = train_step(cfg, 0, x0, context, m, m, opt, ab, torch.device("cpu"), None, probe=probe,
                         targets=targets if with_probe else None)
        return out, m

    plain, m_plain = step(False)
    probed, m_probed = step(True)
    expected = plain["train/loss"] + 0.5 * sum(probed[f"probe/{n}_loss"] for n in ("shape", "colour", "motion"))
    torch.testing.assert_close(probed["train/loss"], expected)
    changed = [not torch.equal(p, q) for p, q in zip(m_plain.transformer_blocks[0].parameters(),
                                                     m_probed.transformer_blocks[0].parameters())]
    assert any(changed)
    with pytest.raises(VidFusionError, match="attribute_layer"):
        load_config(DiTTrainConfig, None, dict(common, attribute_layer=3))
