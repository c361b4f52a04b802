"""Training configs: dataclasses read from TOML, then `key=value` overrides from the command line.

Keys are flat (one TOML table-less file per run) so that every key can be overridden the same way on the command
line. Override values are typed by the dataclass field: `steps=200` is an int, `lr=1e-4` a float, `progress=false`
a bool, `max_minutes=none` clears an optional value, and lists take a TOML array (`sample_prompts=["a", "b"]`) or
comma-separated items (`block_out_channels=32,64,64,64`). TOML values are checked against the same types, so a
typo'd key or a string where a number belongs fails before any model is built.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from vidfusion.errors import VidFusionError
from vidfusion.models.vae import latent_num_frames

C = TypeVar("C", bound="TrainConfig")

EXPORT_DTYPES = ("fp32", "bf16", "fp16")
MIXED_PRECISION = ("auto", "bf16", "fp32")

DEFAULT_PROMPTS = (
    "a red circle moving to the right",
    "two blue squares moving up on a dark background",
    "a large yellow star spinning",
    "a small green triangle bouncing while the camera pans left",
)


@dataclass
class TrainConfig:
    """Fields both trainers share."""

    out_dir: str = "runs/run"
    steps: int = 10_000
    batch_size: int = 8
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 500
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    num_frames: int = 17
    height: int = 128
    width: int = 128
    log_every: int = 50
    sample_every: int = 1000
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    num_workers: int = 8
    device: str = "auto"  # auto, cpu, cuda, cuda:1 ...
    mixed_precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; master weights are always fp32
    max_minutes: float | None = None  # stop cleanly (checkpoint) once this much wall-clock time has passed
    export_dtype: str = "fp32"
    progress: bool = True

    def validate(self) -> None:
        latent_num_frames(self.num_frames)  # 4k + 1, or a message naming the nearest valid counts
        for name in ("steps", "batch_size", "log_every", "sample_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise VidFusionError(f"{name}={getattr(self, name)} must be at least 1; pass {name}=1 or more")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise VidFusionError("warmup_steps and num_workers must be >= 0; pass 0 to switch them off")
        if not 0.0 <= self.ema_decay < 1.0:
            raise VidFusionError(f"ema_decay={self.ema_decay} must be in [0, 1); 0.999 is typical")
        if self.export_dtype not in EXPORT_DTYPES:
            raise VidFusionError(
                f"export_dtype={self.export_dtype!r} is unknown; use one of {', '.join(EXPORT_DTYPES)}"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise VidFusionError(
                f"mixed_precision={self.mixed_precision!r} is unknown; use one of {', '.join(MIXED_PRECISION)}"
            )
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise VidFusionError(f"max_minutes={self.max_minutes} must be positive; pass max_minutes=none for no limit")


@dataclass
class VAETrainConfig(TrainConfig):
    out_dir: str = "runs/vae"
    lr: float = 2e-4
    adam_beta2: float = 0.99
    preset: str = "tiny"  # a key of models.vae.VAE_PRESETS; the fields below override it when set
    block_out_channels: tuple[int, ...] | None = None
    layers_per_block: int | None = None
    latent_channels: int | None = None
    norm_num_groups: int | None = None
    decoder_block_out_channels: tuple[int, ...] | None = None  # a wider decoder (see models.vae.VAEConfig)
    # Where the weights start when out_dir has no checkpoint yet: "" = random, or an exported VAE folder (e.g. an
    # earlier stage of this recipe). With train_encoder=false the encoder is frozen and only the decoder trains, so
    # the latent space, and any diffusion model trained on it meanwhile, stays valid (Stable Diffusion's ft-MSE
    # decoder recipe); the export then keeps the start folder's scaling_factor.
    init_from: str = ""
    train_encoder: bool = True
    # When latent_channels is larger than init_from's, the added channels start as copies (train_vae.py
    # widened_latent_state); the copies' decoder columns differ by zero-sum noise of this many column stds.
    widen_noise: float = 0.1
    # Random crops (frames, pixels) of the rendered clips for cheap early training; None = whole clips. The VAE is
    # convolutional, so crops teach the same kernels at a fraction of the cost; finish at full size.
    crop_frames: int | None = None
    crop_size: int | None = None
    # Loss weights. KL is per pixel (the summed KL divided by the number of pixel values), which makes kl_weight
    # mean what it means in the LDM/CogVideoX losses, where both terms are sums over the sample.
    kl_weight: float = 1e-6
    grad_weight: float = 1.0  # L1 on spatial and temporal finite differences
    # Reconstruction weight 1 + object_weight on pixels within 2 px of the world's objects (train_vae.py); 0 = plain.
    object_weight: float = 0.0
    # Decoder robustness: the decoder's input gets Gaussian noise of per-sample std u * latent_noise latent stds,
    # u ~ U(0, 1), against the clean target (train_vae.py says why). 0 = off. With train_encoder=true the encoder
    # learns noise-robust latents too (a new latent space, so the transformer has to be adapted to it).
    latent_noise: float = 0.0
    disc_start: int = 5000  # GAN (generator term and discriminator training) from this step on
    disc_weight: float = 0.5  # scales the adaptive weight
    disc_lr: float = 2e-4
    disc_channels: int = 64
    image_every: int = 4  # every n-th step trains on single frames (T = 1) cut from the clips; 0 = never
    frames_per_clip: int = 4  # frames taken from each clip on those steps
    num_eval: int = 4  # fixed validation clips for recon sheets and val PSNR
    scale_batches: int = 8  # batches used at export to measure the latent std for scaling_factor

    def validate(self) -> None:
        super().validate()
        if self.height % 8 or self.width % 8:
            raise VidFusionError(f"height/width {self.height}x{self.width} must be multiples of 8 (the VAE's stride)")
        if (self.num_frames - 1) % 8:
            # An even latent count decodes to 4t frames (models/vae.py), so the reconstruction would not line up.
            low = (self.num_frames - 1) // 8 * 8 + 1
            raise VidFusionError(
                f"num_frames={self.num_frames} gives an even number of latent frames, which the VAE decodes to a "
                f"different length; use {low} or {low + 8} (8k + 1)"
            )
        if self.image_every < 0 or self.frames_per_clip < 1:
            raise VidFusionError("image_every must be >= 0 and frames_per_clip >= 1")
        if self.crop_frames is not None and ((self.crop_frames - 1) % 8 or not 1 <= self.crop_frames <= self.num_frames):
            raise VidFusionError(
                f"crop_frames={self.crop_frames} must be 8k + 1 and at most num_frames={self.num_frames}; use 9 or 17"
            )
        if self.crop_size is not None and (self.crop_size % 8 or not 8 <= self.crop_size <= min(self.height, self.width)):
            raise VidFusionError(
                f"crop_size={self.crop_size} must be a multiple of 8 no larger than the clip ({self.height}x"
                f"{self.width}); e.g. crop_size=64"
            )
        if self.object_weight < 0:
            raise VidFusionError(f"object_weight={self.object_weight} must be >= 0; 0 is plain L1, e.g. 8 weights "
                                 f"object pixels 9x")
        if self.latent_noise < 0:
            raise VidFusionError(f"latent_noise={self.latent_noise} must be >= 0; 0 is off, e.g. 0.3 (latent stds)")
        if not self.train_encoder and not self.init_from:
            raise VidFusionError("train_encoder=false freezes a trained encoder; pass init_from=<exported VAE folder>")


@dataclass
class DiTTrainConfig(TrainConfig):
    out_dir: str = "runs/dit"
    batch_size: int = 64
    lr: float = 3e-4
    vae_path: str = ""  # a VAE export folder (config.json + safetensors), e.g. runs/vae/export/vae
    # Transformer shape; the rest of its config (latent channels, latent size) follows the VAE and the video size.
    num_attention_heads: int = 5
    attention_head_dim: int = 64
    num_layers: int = 10
    time_embed_dim: int = 256
    patch_size: int = 2
    max_text_seq_length: int = 32
    use_rotary_positional_embeddings: bool = True
    text_dropout: float = 0.1  # captions replaced by "", the pipeline's negative prompt
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the transformer (CUDA only)
    # Data echoing (Choi et al. 2019): each batch of latents trains `echo` consecutive steps, each with its own
    # timesteps, noise and caption dropout. Encoding clips with the VAE costs more than the tiny transformer's step,
    # so echoing 2-4x buys more optimiser steps per GPU-minute; 1 = every step sees fresh clips.
    echo: int = 1
    # Start weights when out_dir has no checkpoint yet: "" = random, or a transformer folder (an export's
    # transformer/) to continue from, with a fresh optimiser and EMA; its config must match this one's.
    init_from: str = ""
    # Masked-context training (pipelines/masked_context.py, training/task_mix.py): weights for t2v, i2v, extend,
    # interpolate; empty = a plain text-to-video model. A task-mix model takes [noisy, context, mask] channels and a
    # frame-rate label; init_from may then name a plain text-to-video transformer of the same shape, which is widened.
    task_mix: tuple[float, ...] = ()
    context_dropout: float = 0.1
    context_noise: bool = True  # pixel noise sigma = exp(N(-3, 0.5)) on the context frames before encoding
    extend_frames: tuple[int, ...] = (5, 9)
    interp_fps: tuple[float, ...] = (32.0, 128.0)
    base_fps: float = 8.0
    # Loss weight 1 + object_weight on latent cells covered by the world's objects (train_dit.py); 0 = plain MSE.
    object_weight: float = 0.0
    # Shape contrast (train_dit.py): weight of hinge(shape_margin - (loss with a shape-swapped caption - loss with the
    # true one)) on the same noisy input; 0 = off. Costs a second forward and backward per step.
    shape_contrast: float = 0.0
    shape_margin: float = 0.01
    # Training timesteps t = floor(T * u ** timestep_power), u ~ U(0, 1): 1 is uniform; above 1 draws low-noise steps
    # more often (2: 55% below t = 300), where an object's outline is decided (train_dit.py).
    timestep_power: float = 1.0
    # Pixel loss (train_dit.py): weight of the object-weighted L1 between the frozen decoder's decode of the predicted
    # x0 and the clip, on up to pixel_loss_clips samples a step whose t < pixel_loss_max_t; 0 = off.
    pixel_loss: float = 0.0
    pixel_loss_clips: int = 4
    pixel_loss_max_t: int = 400
    # Attribute probe (training/attribute_probe.py): weight of the cross-entropy of a head that reads the video tokens
    # after block attribute_layer (1..num_layers) and predicts each token's shape, colour and motion shares from the
    # world's ground truth; 0 = off. The head is checkpointed but never exported.
    attribute_loss: float = 0.0
    attribute_layer: int = 4
    attribute_hidden: int = 512
    sample_prompts: tuple[str, ...] = field(default_factory=lambda: DEFAULT_PROMPTS)
    sample_steps: int = 20
    sample_guidance: float = 6.0
    sample_seed: int = 0

    def validate(self) -> None:
        super().validate()
        multiple = 8 * self.patch_size
        if self.height % multiple or self.width % multiple:
            raise VidFusionError(
                f"height/width {self.height}x{self.width} must be multiples of {multiple} (VAE stride 8 x patch "
                f"{self.patch_size})"
            )
        if not self.vae_path:
            raise VidFusionError(
                "vae_path is not set; pass vae_path=<out_dir of `vidfusion train vae`>/export/vae"
            )
        if self.echo < 1 or self.ckpt_every % self.echo:
            raise VidFusionError(f"echo={self.echo} must be >= 1 and divide ckpt_every={self.ckpt_every} (checkpoints "
                                 f"fall between batches); e.g. echo=2 with ckpt_every=500")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise VidFusionError(f"text_dropout={self.text_dropout} must be in [0, 1]; 0.1 is typical")
        if self.object_weight < 0:
            raise VidFusionError(f"object_weight={self.object_weight} must be >= 0; 0 is plain MSE, e.g. 4 weights "
                                 f"object cells 5x")
        if self.timestep_power <= 0:
            raise VidFusionError(f"timestep_power={self.timestep_power} must be > 0; 1 samples timesteps uniformly")
        if self.shape_contrast < 0 or self.shape_margin < 0:
            raise VidFusionError(f"shape_contrast={self.shape_contrast} and shape_margin={self.shape_margin} must be "
                                 f">= 0; e.g. shape_contrast=1 shape_margin=0.01")
        if self.pixel_loss < 0 or self.pixel_loss_clips < 1 or not 0 < self.pixel_loss_max_t <= 1000:
            raise VidFusionError(f"pixel_loss={self.pixel_loss} must be >= 0, pixel_loss_clips="
                                 f"{self.pixel_loss_clips} >= 1 and pixel_loss_max_t={self.pixel_loss_max_t} in "
                                 f"(0, 1000]; e.g. pixel_loss=1 pixel_loss_clips=4 pixel_loss_max_t=400")
        bad_layer = self.attribute_loss > 0 and not 1 <= self.attribute_layer <= self.num_layers
        if self.attribute_loss < 0 or bad_layer or self.attribute_hidden < 1:
            raise VidFusionError(f"attribute_loss={self.attribute_loss} must be >= 0, attribute_layer="
                                 f"{self.attribute_layer} in 1..num_layers={self.num_layers} and attribute_hidden="
                                 f"{self.attribute_hidden} >= 1; e.g. attribute_loss=0.05 attribute_layer=4")
        if self.task_mix:
            from vidfusion.training.task_mix import check_task_settings

            check_task_settings(self.task_mix, self.extend_frames, self.interp_fps, self.base_fps, self.num_frames)
            if not 0.0 <= self.context_dropout <= 1.0:
                raise VidFusionError(f"context_dropout={self.context_dropout} must be in [0, 1]; 0.1 is typical")


# ------------------------------------------------------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _split_optional(hint: Any) -> tuple[Any, bool]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _parse_scalar(text: str, kind: type) -> Any:
    if kind is str:
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" else text
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(text)
    return kind(text)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` (a TOML value, or the string of a command-line override) as the type `hint` of field `key`."""
    kind, optional = _split_optional(hint)
    try:
        if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        origin = typing.get_origin(kind)
        if origin in (tuple, list):
            item = typing.get_args(kind)[0]
            if isinstance(value, str):
                text = value.strip()
                value = tomllib.loads(f"v = {text}")["v"] if text.startswith("[") else text.split(",")
            if not isinstance(value, list | tuple):
                raise ValueError(value)
            items = [_parse_scalar(v.strip(), item) if isinstance(v, str) else coerce(key, v, item) for v in value]
            return tuple(items) if origin is tuple else items
        if isinstance(value, str):
            return _parse_scalar(value.strip(), kind)
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (bool, str) and isinstance(value, kind):
            return value
        raise ValueError(value)
    except (ValueError, TypeError, tomllib.TOMLDecodeError):
        raise VidFusionError(f"{key}={value!r} is not a valid {_type_name(hint)}; fix the value in the config or "
                             f"on the command line") from None


def _apply(cls: type[C], values: Mapping[str, Any], where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        if key not in hints:
            raise VidFusionError(f"unknown {where} key {key!r}; valid keys: {', '.join(names)}")
        out[key] = coerce(key, value, hints[key])
    return out


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VidFusionError(f"override {item!r} is not key=value; write e.g. steps=200")
        out[key.strip()] = value
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | Mapping[str, Any] = ()) -> C:
    """Defaults, then the TOML file at `path` (if any), then `overrides` (["key=value", ...] or a dict)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise VidFusionError(f"config file {path} does not exist; pass --config with a TOML file such as "
                                 f"configs/vae_tiny.toml")
        try:
            toml = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise VidFusionError(f"{path} is not valid TOML ({e}); fix the file") from None
        values.update(_apply(cls, toml, f"config ({path.name})"))
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    values.update(_apply(cls, overrides, "override"))
    config = cls(**values)
    config.validate()
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-ready (tuples as lists), for train_state.json."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
