"""`vidfusion info`: describe a model folder from its JSON and safetensors headers, without loading any weights."""

from __future__ import annotations

import json
from collections import Counter
from math import prod
from pathlib import Path

from safetensors import safe_open

from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS, read_json, weight_files
from vidfusion.models.text_encoder import MINILM_PACKAGE, minilm_dir

COMPONENTS = ("transformer", "vae", "text_encoder", "scheduler", "tokenizer")
SUMMARY_KEYS = {
    "transformer": ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                    "patch_size", "patch_size_t", "text_embed_dim", "max_text_seq_length", "sample_frames",
                    "sample_height", "sample_width", "use_rotary_positional_embeddings",
                    "use_learned_positional_embeddings", "ofs_embed_dim"),
    "vae": ("block_out_channels", "latent_channels", "layers_per_block", "temporal_compression_ratio",
            "scaling_factor"),
    "text_encoder": ("model_type", "d_model", "hidden_size", "num_layers", "num_hidden_layers", "vocab_size"),
    "scheduler": ("_class_name", "snr_shift_scale", "rescale_betas_zero_snr", "timestep_spacing", "prediction_type"),
}


def tensor_stats(folder: Path, stem: str) -> tuple[int, Counter]:
    """(parameter count, count per dtype) of the floating-point tensors, read from safetensors headers only."""
    total, dtypes = 0, Counter()
    for path in weight_files(folder, stem):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                n = prod(piece.get_shape())
                dtype = piece.get_dtype()
                if dtype.startswith(("F", "BF")):  # integer buffers (position ids) are not parameters
                    total += n
                    dtypes[dtype] += n
    return total, dtypes


def _component(folder: Path, name: str) -> list[str]:
    config_file = folder / ("scheduler_config.json" if name == "scheduler" else "config.json")
    lines = [f"{name}/"]
    if name == "tokenizer":
        lines.append("  files: " + ", ".join(sorted(p.name for p in folder.iterdir())))
        return lines
    config = read_json(config_file)
    cls = config.get("_class_name") or ",".join(config.get("architectures", []) or [])
    if cls:
        lines.append(f"  class: {cls}")
    for key in SUMMARY_KEYS.get(name, ()):
        if key in config and key != "_class_name":
            lines.append(f"  {key}: {json.dumps(config[key])}")
    if name != "scheduler":
        stem = TRANSFORMERS_WEIGHTS if name == "text_encoder" else DIFFUSERS_WEIGHTS
        total, dtypes = tensor_stats(folder, stem)
        kinds = ", ".join(f"{d}" for d, _ in dtypes.most_common())
        lines.append(f"  parameters: {total:,} ({total / 1e6:.1f} M; {kinds})")
    return lines


def describe(path: Path) -> str:
    if not path.exists():
        raise VidFusionError(f"{path} does not exist; pass a model folder or one of its component folders")
    if (path / "model_index.json").is_file() or any((path / c).is_dir() for c in COMPONENTS):
        lines = [f"model folder {path}"]
        index = read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
        if index:
            lines.append(f"  pipeline: {index.get('_class_name', '?')}")
        for name in COMPONENTS:
            if (path / name).is_dir():
                lines += _component(path / name, name)
            elif name == "text_encoder" and index.get(name, [None])[0] == MINILM_PACKAGE:
                lines += [f"text_encoder/ (from the {MINILM_PACKAGE} package: {minilm_dir()})",
                          *_component(minilm_dir(), name)[1:]]
        return "\n".join(lines)
    if (path / "config.json").is_file():
        config = read_json(path / "config.json")
        cls = config.get("_class_name", "")
        name = "transformer" if "Transformer" in cls else "vae" if "Autoencoder" in cls else "text_encoder"
        return "\n".join(_component(path, name))
    raise VidFusionError(f"{path} has neither model_index.json nor config.json; is it a model folder?")
