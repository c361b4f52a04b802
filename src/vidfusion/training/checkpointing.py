"""Training checkpoints: safetensors only, written atomically, resumed automatically.

    out_dir/checkpoints/
        latest                      {"step": N, "dir": "step_000000N"}, replaced atomically
        step_000000N/
            <part>.safetensors      one per part: model, ema, optimizer, (disc, disc_optimizer), rng; 16 MB shards
            <part>.json             the non-tensor half of an optimizer state (param groups, scalars)
            train_state.json        step, data position, config

A checkpoint is assembled in a hidden temp folder, every file and the folder fsynced, then renamed to step_N in one
`os.replace`, and only then does `latest` move. A kill at any moment therefore leaves `latest` pointing at a complete
folder; half-written temp folders are swept on the next save. Old checkpoints beyond `keep` are deleted afterwards.

Optimizer states are flattened rather than pickled: every tensor goes to safetensors under
`state.<param index>.<name>`, everything else (param groups, non-tensor per-param values) to JSON. Random states
(torch CPU and CUDA generators) are uint8 tensors and go to rng.safetensors.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import (
    load_weights,
    read_json,
    read_state_dict,
    save_state_dict,
    weight_files,
    write_json,
)

LATEST = "latest"
TRAIN_STATE = "train_state.json"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


# ------------------------------------------------------------------------------------------------------------------
# optimizer and RNG states as flat tensor dicts


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`optimizer.state_dict()` -> (tensors for safetensors, JSON-ready rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON has no tuples; torch stores betas as one, and equality of restored states should not depend on it.
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda.{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    cuda = sorted((k for k in state if k.startswith("torch_cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        states = [state[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


# ------------------------------------------------------------------------------------------------------------------
# save / load


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    jsons: dict[str, Any],
    train_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write `tensors` (part name -> state dict) and `jsons` (name -> object) as checkpoint `step`; return its folder.

    `train_state` is written last into the folder as train_state.json with "step" set.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TMP_PREFIX}*"):  # left by a run killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    name = step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        for part, state in tensors.items():
            save_state_dict(state, tmp, stem=part)
        for part, obj in jsons.items():
            write_json(tmp / f"{part}.json", obj)
        write_json(tmp / TRAIN_STATE, {**train_state, "step": step})
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # same step saved before (a resumed run that stopped again at once): replace it
            old = root / f"{TMP_PREFIX}old-{name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(root / LATEST, {"step": step, "dir": name})
    prune_checkpoints(root, keep)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if p.is_dir() and (p / TRAIN_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def prune_checkpoints(root: Path, keep: int) -> None:
    latest = latest_checkpoint(root)
    for old in list_checkpoints(root)[:-keep]:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The folder `latest` names, or None for a fresh run.

    If `latest` is missing or unreadable but complete step folders exist (a copy that lost the file), the newest
    of them is used: a step folder only exists once it was complete.
    """
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        try:
            folder = root / read_json(pointer)["dir"]
        except (VidFusionError, KeyError, TypeError):
            folder = None
        if folder is not None and (folder / TRAIN_STATE).is_file():
            return folder
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_part(folder: Path, part: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    weight_files(folder, part)  # one-line error when the part is missing
    return read_state_dict(folder, part, device=str(device))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, part: str) -> None:
    meta = read_json(folder / f"{part}.json")
    # An optimizer that has not stepped yet has no tensors, and then no safetensors file was written.
    tensors = load_part(folder, part) if any(folder.glob(f"{part}*.safetensors")) else {}
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta))


def restore(folder: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
            ema) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` into the trainer's objects (named by part) and the global RNGs;
    returns its train_state."""
    state = read_json(folder / TRAIN_STATE)
    for part, module in modules.items():
        load_weights(module, load_part(folder, part), folder)
    ema.load_state_dict(load_part(folder, "ema"), state["ema_updates"])
    for part, optimizer in optimizers.items():
        load_optimizer(optimizer, folder, part)
    set_rng_state(load_part(folder, "rng"))
    return state


def write_component(folder: str | os.PathLike, state: dict[str, torch.Tensor], config: dict[str, Any],
                    dtype: torch.dtype | None = None) -> Path:
    """An exported model folder (config.json + diffusion_pytorch_model.safetensors), built beside `folder` and
    swapped in, so a killed export never leaves a half-written folder under the final name."""
    folder = Path(folder).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f"{TMP_PREFIX}{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_state_dict(state, tmp, dtype=dtype)
        write_json(tmp / "config.json", config)
        old = folder.parent / f"{TMP_PREFIX}old-{folder.name}-{os.getpid()}"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def optimizer_parts(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """({name: tensors}, {name: meta}) ready for `save_checkpoint`."""
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    return ({name: tensors} if tensors else {}), {name: meta}
