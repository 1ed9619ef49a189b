"""Two models over one architecture for the bilevel stages: the upper ``θ`` and the lower ``φ``.

``TwoAdapters`` keeps them as two LoRA adapters on one frozen base (one copy of the base in
memory); ``TwoModels`` as two full copies of a small model. Both implement BDS's
``PairedModel`` (per-example losses, parameters) and give the refine stage the module itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from winnow import models
from winnow.bilevel import TwoCopies
from winnow.errors import WinnowError
from winnow.step import batch_losses

ROLES = ("upper", "lower")


class TwoAdapters:
    """``PairedModel`` over two LoRA adapters on one frozen base.

    The lower adapter starts as an exact copy of the upper one, so ``θ`` and ``φ`` start from
    the same point and their gap measures only what the two objectives did differently.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._params = {w: {n: p for n, p in model.named_parameters() if f".{w}." in n} for w in ROLES}
        with torch.no_grad():
            for name, p in self._params["upper"].items():
                self._params["lower"][name.replace(".upper.", ".lower.")].copy_(p)

    def module(self, which: str) -> Any:
        """The model with ``which`` active (and the only trainable adapter)."""
        if self.model.active_adapter != which:
            models.use_adapter(self.model, which)
        return self.model

    def losses(self, which: str, batch: Any) -> torch.Tensor:
        return batch_losses(self.module(which), batch)

    def params(self, which: str) -> list[torch.nn.Parameter]:
        return list(self._params[which].values())

    def save(self, folder: Path, which: str = "upper") -> None:
        """One adapter alone, in peft's format."""
        self.module(which).save_pretrained(folder, selected_adapters=[which])

    def load(self, folder: Path, which: str) -> None:
        """Set adapter ``which`` to an adapter saved by ``save`` (either role)."""
        files = sorted(Path(folder).glob("**/adapter_model.safetensors"))
        if not files:
            raise WinnowError(f"{folder}: no adapter_model.safetensors to start from")
        saved = load_file(files[0])
        with torch.no_grad():
            for name, p in self._params[which].items():
                key = name.replace(f".{which}.", ".")
                if key not in saved:
                    raise WinnowError(f"{files[0]}: adapter does not match the model (no {key})")
                p.copy_(saved[key])

    def init_from(self, folder: Path) -> None:
        """Set both adapters to one saved adapter."""
        for w in ROLES:
            self.load(folder, w)


class TwoModels(TwoCopies):
    """``PairedModel`` over two full copies of a small causal LM."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model, batch_losses)

    def module(self, which: str) -> torch.nn.Module:
        return self.models[which]

    def save(self, folder: Path, which: str = "upper") -> None:
        self.models[which].save_pretrained(folder)

    def load(self, folder: Path, which: str) -> None:
        """Set model ``which`` to a model saved by ``save``."""
        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise WinnowError(f"{folder}: no *.safetensors to start from")
        state = {k: v for f in files for k, v in load_file(f).items()}
        missing, unexpected = self.models[which].load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise WinnowError(f"{folder}: model does not match (missing {missing[:3]}, unexpected {unexpected[:3]})")


Paired = TwoAdapters | TwoModels


def make_pair(model: Any, use_lora: bool) -> Paired:
    """The pair for a model prepared with adapters ``("upper", "lower")`` (LoRA) or without."""
    return TwoAdapters(model) if use_lora else TwoModels(model)


def autocast_for(device: torch.device) -> Callable[[], Any]:
    """bf16 autocast on devices where ``models.default_dtype`` picks bf16, else a no-op context."""
    if models.default_dtype(device) == torch.bfloat16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
