"""Load a trained model back for evaluation: a ``winnow train`` folder, a model folder, or a LoRA
adapter merged onto its base."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from winnow import models
from winnow.config import EvalConfig
from winnow.errors import WinnowError

log = logging.getLogger(__name__)



def load_trained(path: str | Path, config: EvalConfig, *, texts: Sequence[str] | None = None,
                 device: torch.device | None = None) -> tuple[Any, Any]:
    """Load a model for evaluation, in eval mode, on ``device`` (the default device when ``None``).

    ``path``: a ``winnow train`` output folder (its ``model/`` sub-folder is loaded), a Hugging
    Face model folder, or a built-in name (``tiny`` is random, built on ``texts``: smoke tests
    only). A folder holding a LoRA adapter (``adapter_config.json``, as ``winnow train`` saves
    with LoRA) is loaded onto its base model and merged. The base is ``config.model`` when that
    names something other than the default ``tiny`` (as in a run config, where it is the model
    that was trained), else the base recorded in ``adapter_config.json``. The tokenizer is the
    one saved beside the weights.
    """
    device = device if device is not None else models.default_device()
    name = str(path)
    if name in models.BUILTIN_MODELS:
        model, tokenizer = models.load_model(name, texts=texts, device=device, seed=config.seed)
        return model.eval(), tokenizer
    folder = Path(path)
    if (folder / "model").is_dir():
        folder = folder / "model"
    if not (folder / "adapter_config.json").exists():
        model, tokenizer = models.load_model(str(folder), device=device)
        return model.eval(), tokenizer

    from peft import PeftModel
    from transformers import AutoTokenizer

    base = _adapter_base(folder, config)
    log.info("loading LoRA adapter %s onto base model %s", folder, base)
    model, _ = models.load_model(base, device=device)
    model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def _adapter_base(folder: Path, config: EvalConfig) -> str:
    """The base model of the adapter in ``folder`` (see ``load_trained``)."""
    recorded = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path") or ""
    if config.model != "tiny":
        return config.model
    if recorded and (recorded in models.BUILTIN_MODELS or Path(recorded).is_dir()) and recorded != "tiny":
        return recorded
    raise WinnowError(
        f"{folder} holds a LoRA adapter whose base model cannot be found (recorded: {recorded or 'none'}); "
        "name the base with the `model` option (e.g. smollm2-135m). Adapters on the built-in tiny model "
        "cannot be reloaded: its random base weights are not saved, so train tiny without LoRA")
