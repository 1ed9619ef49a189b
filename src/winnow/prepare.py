"""Set-up shared by every training stage: load the model with its adapters, encode the data."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from winnow import models
from winnow.config import ModelOptions
from winnow.data import Example, encode_all
from winnow.data.formatting import EncodedSet

log = logging.getLogger(__name__)

LORA_ABOVE = 50_000_000
"""Models with more parameters than this get LoRA adapters unless the options say otherwise."""


def prepare_model(
    options: ModelOptions, texts: Sequence[str], *, seed: int = 0, adapters: Sequence[str] = ("default",)
) -> tuple[Any, Any, bool]:
    """Load the model named by ``options`` in fp32 and add LoRA adapters when asked (or when large).

    Returns:
        ``(model, tokenizer, uses_lora)``; with LoRA, every name in ``adapters`` is an adapter.
    """
    torch.manual_seed(seed)
    model, tokenizer = models.load_model(options.model, texts=texts, dtype=torch.float32, seed=seed)
    use_lora = options.lora if options.lora is not None else models.count_parameters(model)[1] > LORA_ABOVE
    if use_lora:
        model = models.add_lora(model, adapters=adapters, r=options.lora_r, alpha=options.lora_alpha,
                                dropout=options.lora_dropout, target_modules=options.targets(),
                                last_layers=options.lora_layers)
    return model, tokenizer, use_lora


def encode_for_training(tokenizer: Any, examples: Sequence[Example], options: ModelOptions) -> EncodedSet:
    """Encode with the options' length policy, logging what was dropped or truncated."""
    enc = encode_all(tokenizer, examples, max_length=options.max_length,
                     truncation=options.truncation, train_on=options.train_on)  # type: ignore[arg-type]
    if enc.dropped:
        log.warning("dropped %d of %d examples (first: %s: %s)", len(enc.dropped), len(examples), *enc.dropped[0])
    if enc.truncated:
        left = sum(c > 0 for _, c in enc.truncated)
        log.warning("truncated %d examples to max_length %d (%d from the left, %d from the right)",
                    len(enc.truncated), options.max_length, left, len(enc.truncated) - left)
    return enc
