"""Generation with Hugging Face ``model.generate``: batched, left-padded, with the KV cache.

Log-probabilities come from ``output_logits=True``: the raw logits of every step, before any
logits processor, scaled here by the temperature, ``log_softmax(logits / T)`` (``T = 1`` for
greedy). That is the distribution the sampler draws from up to top-p truncation, which is
not applied to the recorded values, and it is what a forward pass of the same model at the
same temperature gives, so the stale-sample ratio of DESIGN §1.4 can be computed from them.
Other sampling settings in the model's own ``generation_config`` (a repetition penalty, say)
would still shape the sampler but not the recorded values; Winnow's models set none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from winnow.data.example import Message
from winnow.errors import WinnowError
from winnow.generation.base import (
    Completion,
    SamplingParams,
    finish_reason,
    prompt_token_ids,
    stop_token_ids,
    too_long,
)
from winnow.models import default_device

logger = logging.getLogger(__name__)


class HFGenerator:
    """`Generator` over a causal LM (a ``PreTrainedModel`` or a peft ``PeftModel``).

    Args:
        model: The model; it must already live on ``device``. Its train/eval mode is
            restored after each call.
        tokenizer: Its tokenizer (chat template, or the plain fallback).
        device: Where the inputs go; `default_device()` if None.
        batch_size: Sequences per ``generate`` call; with sampling and ``n > 1`` a batch
            holds ``max(1, batch_size // n)`` prompts.
        max_context: Context length; ``model.config.max_position_embeddings`` if None.
            Prompts with ``prompt tokens + max_new_tokens`` above it are skipped (``too_long``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device | None = None,
        batch_size: int = 16,
        max_context: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise WinnowError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device if device is not None else default_device()
        self.batch_size = batch_size
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None)
        self.stop_ids = stop_token_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    def generate(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, ``params.n`` completions (``too_long`` placeholders if it does not fit)."""
        self._check_device()
        ids = [prompt_token_ids(self.tokenizer, p) for p in prompts]
        out: list[list[Completion]] = [[] for _ in ids]
        fits = []
        for i, x in enumerate(ids):
            if self.max_context is not None and len(x) + params.max_new_tokens > self.max_context:
                out[i] = too_long(params.n)
            else:
                fits.append(i)
        if len(fits) < len(ids):
            logger.warning(
                "skipped %d of %d prompts: prompt + max_new_tokens (%d) exceeds the context of %d tokens",
                len(ids) - len(fits), len(ids), params.max_new_tokens, self.max_context,
            )
        # Longest first and similar lengths together: less padding, and an out-of-memory error
        # shows up on the first batch rather than the last.
        fits.sort(key=lambda i: -len(ids[i]))
        per_batch = self.batch_size if params.greedy else max(1, self.batch_size // params.n)
        rng = nullcontext() if params.greedy else _seeded(params.seed, self.device)
        starts = range(0, len(fits), per_batch)
        bar = tqdm(starts, desc="generate", unit="batch", leave=False, disable=len(starts) <= 1)
        with _eval_mode(self.model), rng, torch.no_grad():
            for start in bar:
                chunk = fits[start : start + per_batch]
                for i, comps in zip(chunk, self._generate_batch([ids[i] for i in chunk], params), strict=True):
                    out[i] = comps
        return out

    def _generate_batch(self, batch: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """One ``model.generate`` call over left-padded prompts; ``params.n`` completions each."""
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)  # (B, P)
        attention_mask = torch.zeros_like(input_ids)  # (B, P)
        for r, x in enumerate(batch):
            input_ids[r, width - len(x) :] = torch.tensor(x)
            attention_mask[r, width - len(x) :] = 1
        # Greedy gives n identical sequences: generate one, copy it.
        per_prompt = 1 if params.greedy else params.n
        result = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            **self._generation_kwargs(params, per_prompt),
        )
        new = result.sequences[:, width:]  # (B * per_prompt, S)
        logprobs = _token_logprobs(result.logits, new, params.temperature)  # (B * per_prompt, S)
        rows = [self._completion(t, lp) for t, lp in zip(new.tolist(), logprobs.tolist(), strict=True)]
        out = []
        for b in range(len(batch)):
            mine = rows[b * per_prompt : (b + 1) * per_prompt]
            out.append(mine if per_prompt == params.n else [_copy(mine[0]) for _ in range(params.n)])
        return out

    def _generation_kwargs(self, params: SamplingParams, per_prompt: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": not params.greedy,
            "num_return_sequences": per_prompt,
            "eos_token_id": self.stop_ids,
            "pad_token_id": self.pad_id,
            "use_cache": True,
            "output_logits": True,
            "return_dict_in_generate": True,
        }
        if not params.greedy:
            # top_k=0: transformers otherwise applies its default top-k of 50 when sampling.
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        return kwargs

    def _completion(self, tokens: list[int], logprobs: list[float]) -> Completion:
        """Cut one generated row at its first stop token (kept in the ids, not in the text)."""
        stop = next((j for j, t in enumerate(tokens) if t in self.stop_ids), None)
        # Past a stop token the row holds padding (the rest of the batch was still running).
        body = tokens if stop is None else tokens[:stop]
        kept = tokens if stop is None else tokens[: stop + 1]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        return Completion(text, kept, logprobs[: len(kept)], finish_reason(text, stop is not None))

    def _check_device(self) -> None:
        param = next(self.model.parameters(), None)
        if param is not None and param.device.type != self.device.type:
            raise WinnowError(f"the model is on {param.device} but the generator was set up for {self.device}")


def _token_logprobs(logits: Sequence[torch.Tensor], tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probability of each chosen token under ``log_softmax(logits / T)`` (``T = 1`` if greedy)."""
    if len(logits) != tokens.shape[1]:
        raise WinnowError(f"generate returned {len(logits)} logit steps for {tokens.shape[1]} tokens")
    scale = temperature if temperature > 0 else 1.0
    # One step at a time: stacking would hold a (R, S, V) float tensor.
    cols = [
        torch.log_softmax(step.float() / scale, dim=-1).gather(1, tokens[:, s : s + 1])  # (R, 1)
        for s, step in enumerate(logits)
    ]
    return torch.cat(cols, dim=1) if cols else tokens.new_zeros(tokens.shape, dtype=torch.float)  # (R, S)


def _copy(c: Completion) -> Completion:
    return replace(c, token_ids=list(c.token_ids), logprobs=list(c.logprobs))


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the block; then every submodule gets back its own previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for the block and give the caller's RNG state back afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
