"""Safetensors weights and JSON configs in the diffusers / transformers folder layout.

A component folder (transformer/, vae/, text_encoder/) holds `config.json` and either one
`<stem>.safetensors` or shards `<stem>-0000i-of-0000n.safetensors` with `<stem>.safetensors.index.json`.
diffusers names its weights `diffusion_pytorch_model`, transformers `model`.

Only safetensors are ever read: a folder that holds nothing but pickles (.bin/.pt/.ckpt) is refused with a message
that says how to convert it, because unpickling an untrusted file can run arbitrary code.

Every write is atomic (temp file in the same folder, fsync, os.replace), so a run killed mid-save leaves the previous
file intact. Shards are capped at 16 MB by default so that checkpoints fit the project's file-size rule.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vidfusion.errors import VidFusionError

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_SHARD_BYTES = 16 * 1024 * 1024


# ----------------------------------------------------------------------------------------------------------------
# atomic writes


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, give it the usual permissions and move it into
    place: readers see the old file or the new one, never a partial one. The single implementation for the package."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; outputs should be as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VidFusionError(f"{path} is missing; a checkpoint folder needs it (is this the right folder?)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VidFusionError(f"{path} is not valid JSON ({e}); restore it from the original checkpoint") from None


# ----------------------------------------------------------------------------------------------------------------
# reading


def weight_files(folder: str | os.PathLike, stem: str) -> list[Path]:
    """The safetensors files that make up `stem` in `folder`, in shard order; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VidFusionError(f"checkpoint folder {folder} does not exist; pass the path of a downloaded model folder")
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise VidFusionError(f"{index} has no weight_map; restore it from the original checkpoint")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise VidFusionError(f"{folder} is missing shard {missing[0]} listed in {index.name}; copy the complete folder")
        return files
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise VidFusionError(
            f"{folder} holds only pickle weights ({pickles[0]}); VidFusion never unpickles files. Convert them to safetensors once in a "
            f"trusted environment, e.g. `model.save_pretrained(folder, safe_serialization=True)`, then retry"
        )
    raise VidFusionError(f"no {stem}.safetensors in {folder}; copy the weights into the folder or pass another --model")


def read_state_dict(folder: str | os.PathLike, stem: str = DIFFUSERS_WEIGHTS, device: str = "cpu") -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder, stem):
        try:
            with safe_open(str(path), framework="pt", device=device) as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except Exception as e:  # safetensors raises several types for a damaged header or body
            raise VidFusionError(f"{path} is not a readable safetensors file ({e}); re-copy it from the source") from None
    return state


def check_weights(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Raise a one-line error naming the first missing, unexpected or mis-shaped key of `state`.

    `expected` may come from a module on the meta device: only names and shapes are read.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise VidFusionError(
            f"{where}: weight {missing[0]!r} is missing ({len(missing)} missing in all); the checkpoint does not match "
            f"its config.json, re-copy the weights or fix the config"
        )
    if unexpected:
        raise VidFusionError(
            f"{where}: unexpected weight {unexpected[0]!r} ({len(unexpected)} in all); the checkpoint belongs to another "
            f"architecture or config, check config.json"
        )
    for key, ref in expected.items():
        if state[key].shape != ref.shape:
            raise VidFusionError(
                f"{where}: weight {key!r} has shape {tuple(state[key].shape)} but the config needs {tuple(ref.shape)}; "
                f"config.json and the weights disagree, use the config that came with the weights"
            )


def load_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Strict load with `check_weights`' messages; dtypes convert to the module's."""
    check_weights(module.state_dict(), state, where)
    module.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------------------------
# writing


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        # Count each entry's JSON header line too, so a whole file (not just its tensor bytes) stays under the cap.
        nbytes = tensor.numel() * tensor.element_size() + len(key) + 128
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def save_state_dict(
    state: dict[str, torch.Tensor],
    folder: str | os.PathLike,
    stem: str = DIFFUSERS_WEIGHTS,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    dtype: torch.dtype | None = None,
) -> list[Path]:
    """Write `state` as one file or as shards plus an index; stale files of the same stem are removed afterwards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage and non-contiguous views: give each entry its own contiguous copy.
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous().clone()
               for k, v in state.items()}
    shards = _shards(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    written: list[Path] = []
    index_path = folder / f"{stem}.safetensors.index.json"
    if len(shards) == 1:
        path = folder / f"{stem}.safetensors"
        atomic_write(path, lambda tmp: save_file(shards[0], str(tmp), metadata=metadata))
        written.append(path)
        index_path.unlink(missing_ok=True)
    else:
        n = len(shards)
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            path = folder / f"{stem}-{i:05d}-of-{n:05d}.safetensors"
            atomic_write(path, lambda tmp, shard=shard: save_file(shard, str(tmp), metadata=metadata))
            written.append(path)
            weight_map.update({k: path.name for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        # The index goes last: until it lands, a reader still sees the previous complete checkpoint.
        write_json(index_path, {"metadata": {"total_size": total}, "weight_map": weight_map})
        (folder / f"{stem}.safetensors").unlink(missing_ok=True)
    keep = {p.name for p in written}
    for stale in folder.glob(f"{stem}*.safetensors"):
        if stale.name not in keep:
            stale.unlink()
    return written


def parameter_count(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)
