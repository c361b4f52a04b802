"""Whole-model folders in the diffusers pipeline layout: load them into our modules, save ours the same way.

    model_index.json
    transformer/config.json + diffusion_pytorch_model[-0000i-of-0000n].safetensors
    vae/config.json         + diffusion_pytorch_model[...].safetensors
    text_encoder/config.json + model[...].safetensors          (transformers layout)
    tokenizer/...
    scheduler/scheduler_config.json

Our modules use diffusers' parameter names, so weights load without renaming; configs map key for key onto our
dataclasses. The folder a published CogVideoX checkpoint ships in loads as it is, and a folder we save loads in diffusers.

Big models are built on the meta device and their weights assigned from the file, so loading a 5B checkpoint costs
one read of the weights and no random initialisation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vidfusion.diffusion.schedule import ScheduleConfig
from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import (
    DIFFUSERS_WEIGHTS,
    current_umask,
    check_weights,
    read_json,
    read_state_dict,
    save_state_dict,
    write_json,
)
from vidfusion.models.text_encoder import MINILM_PACKAGE, TextEncoder, load_text_encoder, minilm_dir
from vidfusion.models.transformer import CogVideoXTransformer, TransformerConfig
from vidfusion.models.vae import CogVideoXVAE, VAEConfig

SAMPLER_OF_SCHEDULER = {"CogVideoXDDIMScheduler": "ddim", "CogVideoXDPMScheduler": "dpm"}
SCHEDULER_OF_SAMPLER = {v: k for k, v in SAMPLER_OF_SCHEDULER.items()}


@dataclass
class Components:
    """Everything a pipeline needs; `text_encoder` may be None when prompts arrive pre-encoded."""

    transformer: CogVideoXTransformer
    vae: CogVideoXVAE
    text_encoder: TextEncoder | None
    schedule: ScheduleConfig
    default_sampler: str = "ddim"
    path: Path | None = None
    # Sampling settings the model was tuned for (num_steps, guidance_scale, fps); the CLI uses them as defaults.
    defaults: dict = field(default_factory=dict)

    @property
    def is_image_to_video(self) -> bool:
        return self.transformer.config.in_channels == 2 * self.transformer.config.out_channels


def _build(module_cls, config, state: dict[str, torch.Tensor], where: Path, device, dtype) -> nn.Module:
    with torch.device("meta"):
        module = module_cls(config)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    check_weights(module.state_dict(), state, where)
    module.load_state_dict(state, strict=True, assign=True)
    # Derived tensors (RoPE, sin-cos tables) are computed in forward, never stored as non-persistent buffers,
    # so after the assignment nothing is left on the meta device.
    assert not any(t.is_meta for t in (*module.parameters(), *module.buffers())), "meta tensors left after loading"
    return module.to(device).eval().requires_grad_(False)


def load_transformer(folder: str | os.PathLike, device="cpu", dtype=torch.float32) -> CogVideoXTransformer:
    folder = Path(folder)
    config = TransformerConfig.from_dict(read_json(folder / "config.json"))
    return _build(CogVideoXTransformer, config, read_state_dict(folder, DIFFUSERS_WEIGHTS), folder, device, dtype)


def load_vae(folder: str | os.PathLike, device="cpu", dtype=torch.float32) -> CogVideoXVAE:
    folder = Path(folder)
    config = VAEConfig.from_dict(read_json(folder / "config.json"))
    return _build(CogVideoXVAE, config, read_state_dict(folder, DIFFUSERS_WEIGHTS), folder, device, dtype)


def load_pretrained(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    text_encoder: bool = True,
) -> Components:
    path = Path(path)
    if not path.is_dir():
        raise VidFusionError(f"model folder {path} does not exist; pass --model with a diffusers-layout CogVideoX folder")
    for sub in ("transformer", "vae", "scheduler"):
        if not (path / sub).is_dir():
            raise VidFusionError(
                f"{path} has no {sub}/ folder; a model folder holds transformer/, vae/, scheduler/, text_encoder/ and "
                f"tokenizer/ as diffusers saves them"
            )
    transformer = load_transformer(path / "transformer", device, dtype)
    vae = load_vae(path / "vae", device, dtype)
    scheduler_dict = read_json(path / "scheduler" / "scheduler_config.json")
    schedule = ScheduleConfig.from_dict(scheduler_dict)
    sampler = SAMPLER_OF_SCHEDULER.get(scheduler_dict.get("_class_name"), "ddim")
    index = read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    encoder = None
    if text_encoder:
        encoder_dir, tokenizer_dir = text_encoder_dirs(path, index)
        encoder = load_text_encoder(encoder_dir, tokenizer_dir, transformer.config.max_text_seq_length, device, dtype)
        if encoder.dim != transformer.config.text_embed_dim:
            raise VidFusionError(
                f"{path}: the text encoder gives {encoder.dim}-dim states but the transformer expects "
                f"text_embed_dim={transformer.config.text_embed_dim}; the folders come from different models"
            )
    return Components(transformer, vae, encoder, schedule, sampler, path, index.get("_vidfusion_defaults", {}))


def text_encoder_dirs(path: Path, index: dict) -> tuple[Path, Path]:
    """Where the text encoder and tokenizer live: the folder's own subfolders, or, when model_index.json names the
    MiniLM package as their library (the shipped tiny model), that package's folder, so its weights are not copied."""
    if index.get("text_encoder", [None])[0] == MINILM_PACKAGE:
        return minilm_dir(), minilm_dir()
    return path / "text_encoder", path / "tokenizer"


def read_defaults(path: str | os.PathLike) -> dict:
    index_file = Path(path) / "model_index.json"
    return read_json(index_file).get("_vidfusion_defaults", {}) if index_file.is_file() else {}


def save_pretrained(components: Components, path: str | os.PathLike, dtype: torch.dtype | None = None,
                    max_shard_bytes: int = 16 * 1024 * 1024) -> None:
    """Write a diffusers-layout folder. The folder is assembled beside the target and swapped in at the end, so an
    interrupted save never leaves a half-written model under `path`."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        save_state_dict(components.transformer.state_dict(), tmp / "transformer", DIFFUSERS_WEIGHTS, max_shard_bytes, dtype)
        write_json(tmp / "transformer" / "config.json", components.transformer.config.to_dict())
        save_state_dict(components.vae.state_dict(), tmp / "vae", DIFFUSERS_WEIGHTS, max_shard_bytes, dtype)
        write_json(tmp / "vae" / "config.json", components.vae.config.to_dict())
        scheduler_class = SCHEDULER_OF_SAMPLER[components.default_sampler]
        write_json(tmp / "scheduler" / "scheduler_config.json", components.schedule.to_dict(scheduler_class))
        index = {
            "_class_name": "CogVideoXImageToVideoPipeline" if components.is_image_to_video else "CogVideoXPipeline",
            "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", scheduler_class],
            "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLCogVideoX"],
        }
        encoder = components.text_encoder
        if components.defaults:
            index["_vidfusion_defaults"] = components.defaults
        if encoder is not None and Path(encoder.model.name_or_path) == minilm_dir():
            index["text_encoder"] = [MINILM_PACKAGE, type(encoder.model).__name__]
            index["tokenizer"] = [MINILM_PACKAGE, type(encoder.tokenizer).__name__]
        elif encoder is not None:
            model = encoder.model
            original_dtype = next(model.parameters()).dtype
            try:  # nn.Module.to converts in place: convert for the write, then restore the caller's model
                model.to(dtype or original_dtype).save_pretrained(
                    tmp / "text_encoder", safe_serialization=True, max_shard_size=max_shard_bytes
                )
            finally:
                model.to(original_dtype)
            encoder.tokenizer.save_pretrained(tmp / "tokenizer")
            index["text_encoder"] = ["transformers", type(model).__name__]
            index["tokenizer"] = ["transformers", type(encoder.tokenizer).__name__]
        write_json(tmp / "model_index.json", index)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes a private folder; the model folder should not be
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
