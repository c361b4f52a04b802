"""What both trainers share: device and precision, seeded generators, EMA, the LR schedule, the data loader over the
procedural world, metric logging (TensorBoard + metrics.jsonl), the progress bar and the wall-clock budget.

Decisions worth knowing:
- Randomness comes from generators seeded by (seed, step, stream), never from a global RNG carried across steps, so
  step N draws the same noise whether the run was resumed or not.
- Sample `i` of the run is world sample `i` of the train split (with the run's seed); step s reads samples
  [s * batch, (s + 1) * batch). The loader is an index-based Dataset over that range, so resuming only needs the
  step, and each worker renders whole clips in parallel.
- EMA decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so early EMA weights are not dominated by
  the random initialisation in short runs; it reaches 0.999 after about 9000 updates.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from vidfusion.data.world import object_id_maps, object_masks, shape_swapped_caption
from vidfusion.data.world import sample as world_sample
from vidfusion.errors import VidFusionError
from vidfusion.training.attribute_probe import object_classes, token_fractions

# ------------------------------------------------------------------------------------------------------------------
# device, precision, randomness


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VidFusionError(f"device={name} asked for a GPU but torch sees none; pass device=cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA unless asked for fp32; None means plain fp32."""
    if mixed_precision == "fp32" or device.type != "cuda":
        if mixed_precision == "bf16" and device.type != "cuda":
            raise VidFusionError("mixed_precision=bf16 needs a CUDA device; pass mixed_precision=auto or fp32 on CPU")
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def step_generator(seed: int, step: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, step, stream); streams keep noise, timesteps, dropout apart."""
    value = int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(value)


# ------------------------------------------------------------------------------------------------------------------
# optimisation


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR for update number `step` (0-based): linear warm-up to `lr` over `warmup_steps` updates (the first update
    uses lr / warmup_steps), then a cosine to lr * min_lr_ratio at the last update."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def adamw(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
          device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and conv kernels only; biases, norms and embeddings' gains are not
    decayed (decaying a LayerNorm gain towards 0 fights the normalisation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device.type == "cuda")


def grad_norm_and_clip(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (0 = no clipping); returns the pre-clip norm as a tensor, read back only when logged."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")).detach()


class EMA:
    """An fp32 shadow copy of a model's parameters (buffers are copied as they are)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * param."""
        decay = self.current_decay()
        named = dict(model.named_parameters())
        shadows, params = [], []
        for key, value in model.state_dict().items():
            if key in named and value.is_floating_point():
                shadows.append(self.shadow[key])
                params.append(value.float())
            else:
                self.shadow[key].copy_(value)
        if shadows:
            torch._foreach_lerp_(shadows, params, 1.0 - decay)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        for key, value in state.items():
            self.shadow[key].copy_(value)
        self.num_updates = num_updates

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict(self.shadow)
        return model


# ------------------------------------------------------------------------------------------------------------------
# data


class WorldClips(Dataset):
    """Sample `i` of the train split: {"video": uint8 [3, T, H, W], "caption": str}. Converting to float happens on
    the device, so workers and pinned memory move 4x fewer bytes. With `with_masks` also "objects": bool [T, H, W]
    (world.object_masks), with `with_swaps` "swapped_caption": str (world.shape_swapped_caption), with `labels`
    (temporal, cell) the attribute probe's "object_fractions" and "object_classes" (training/attribute_probe.py)."""

    def __init__(self, seed: int, num_frames: int, height: int, width: int, split: str = "train",
                 with_masks: bool = False, with_swaps: bool = False, labels: tuple[int, int] | None = None):
        self.seed, self.num_frames, self.height, self.width, self.split = seed, num_frames, height, width, split
        self.with_masks, self.with_swaps, self.labels = with_masks, with_swaps, labels

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = world_sample(index, self.split, seed=self.seed, num_frames=self.num_frames, height=self.height,
                         width=self.width)
        item = {"video": torch.from_numpy(s.video).permute(3, 0, 1, 2).contiguous(), "caption": s.caption}
        if self.with_masks:
            item["objects"] = torch.from_numpy(object_masks(s.scene, self.num_frames, self.height, self.width))
        if self.with_swaps:
            item["swapped_caption"] = shape_swapped_caption(index, self.split, self.seed)
        if self.labels:
            item.update(probe_labels(s.scene, self.num_frames, self.height, self.width, self.labels))
        return item


class IndexRange(Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def _worker_init(_: int) -> None:
    import cv2

    # Each worker renders one clip at a time; nested thread pools would only fight over the cores.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, first_sample: int, num_steps: int, batch_size: int, num_workers: int,
                device: torch.device) -> DataLoader:
    """Batches for `num_steps` steps starting at sample `first_sample`, in order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=IndexRange(first_sample, first_sample + num_steps * batch_size),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        drop_last=True,
    )


def probe_labels(scene, num_frames: int, height: int, width: int, labels: tuple[int, int],
                 times: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The attribute probe's targets for one scene: object shares per token and the objects' classes."""
    ids = object_id_maps(scene, num_frames, height, width, times)
    return {"object_fractions": torch.from_numpy(token_fractions(ids, *labels)),
            "object_classes": torch.from_numpy(object_classes(scene))}


def to_model_range(video_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, 3, T, H, W] -> float32 in [-1, 1] on `device`."""
    return video_uint8.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def eval_batch(num: int, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, list[str]]:
    """The first `num` clips of the fixed val split (uint8 [B, 3, T, H, W]) and their captions."""
    ds = WorldClips(0, num_frames, height, width, split="val")
    items = [ds[i] for i in range(num)]
    return torch.stack([it["video"] for it in items]), [it["caption"] for it in items]


# ------------------------------------------------------------------------------------------------------------------
# logging, progress, budget


class MetricLogger:
    """Scalars and images to TensorBoard (out_dir/tb) and scalars also to out_dir/metrics.jsonl."""

    def __init__(self, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tb"))
        self.jsonl = open(out_dir / "metrics.jsonl", "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in values.items()}}) + "\n")
        self.jsonl.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
        self.jsonl.close()


class Averager:
    """Running means of the metrics between two log lines. Values may be device tensors: they are summed where they
    live and read back only in `pop`, so logging does not force a GPU sync on every step."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        for key, value in values.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


class Progress:
    """tqdm over steps with the loss and samples/s (measured between log lines)."""

    def __init__(self, start: int, total: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
        self.last_time = time.perf_counter()
        self.samples = 0

    def step(self, samples: int) -> None:
        self.samples += samples
        self.bar.update()

    def throughput(self) -> float:
        now = time.perf_counter()
        rate = self.samples / max(now - self.last_time, 1e-9)
        self.last_time, self.samples = now, 0
        return rate

    def show(self, **values: float) -> None:
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def close(self) -> None:
        self.bar.close()


class Deadline:
    def __init__(self, max_minutes: float | None):
        self.end = None if max_minutes is None else time.monotonic() + 60.0 * max_minutes

    def reached(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of per-sample PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float().clamp(-1, 1) - y.float()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean()


def export_dtype(name: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def describe_resume(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A note listing config keys that differ from the checkpoint's (allowed, but worth knowing)."""
    changed = [k for k in current if k in saved and saved[k] != current[k]]
    return f"resuming with changed config keys: {', '.join(changed)}" if changed else None
