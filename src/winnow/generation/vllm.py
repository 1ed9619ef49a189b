"""Generation with vLLM (optional: ``pip install 'winnow[vllm]'``).

``vllm`` is imported only when a `VLLMGenerator` is built from a model path or without a
``sampling_params_cls``, never when this module is imported. Prompts are rendered and
tokenised here, exactly as for training (`prompt_token_ids`), and handed to vLLM as token
ids, so vLLM never adds a second BOS to a template that already writes one.

Log-probabilities: each completion asks for ``logprobs=0``, i.e. the sampled token's own
log-probability. Which distribution that is follows vLLM's ``logprobs_mode``; vLLM's default
(``raw_logprobs``) is the model's distribution before temperature. To record what the HF
backend records, the temperature-scaled distribution, build the ``LLM`` with
``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2; it also applies top-p).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

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

logger = logging.getLogger(__name__)


class VLLMGenerator:
    """`Generator` over a ``vllm.LLM``.

    Args:
        llm: A ``vllm.LLM``, or a model path or name to build one from (then ``llm_kwargs``
            go to ``vllm.LLM``).
        tokenizer: Renders the chat prompts; ``llm.get_tokenizer()`` if None.
        sampling_params_cls: vLLM's ``SamplingParams`` class, or a stand-in in tests;
            ``vllm.SamplingParams`` if None.
        max_context: Context length for the ``too_long`` check; the engine's
            ``max_model_len`` if None and it can be read.
        **llm_kwargs: Passed to ``vllm.LLM`` when ``llm`` is a path.

    Raises:
        WinnowError: vLLM is needed but not installed, or ``llm_kwargs`` without a path.
    """

    def __init__(
        self,
        llm: Any,
        tokenizer: Any = None,
        *,
        sampling_params_cls: Any = None,
        max_context: int | None = None,
        **llm_kwargs: Any,
    ) -> None:
        if isinstance(llm, str):
            llm = _import_vllm().LLM(model=llm, **llm_kwargs)
        elif llm_kwargs:
            raise WinnowError(f"vLLM options {sorted(llm_kwargs)} apply only when llm is a model path")
        self.llm = llm
        self.sampling_params_cls = sampling_params_cls or _import_vllm().SamplingParams
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.max_context = max_context or _max_model_len(llm)

    def generate(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, ``params.n`` completions (``too_long`` placeholders if it does not fit)."""
        ids = [prompt_token_ids(self.tokenizer, p) for p in prompts]
        out: list[list[Completion]] = [too_long(params.n) for _ in ids]
        fits = [
            i for i, x in enumerate(ids)
            if self.max_context is None or len(x) + params.max_new_tokens <= self.max_context
        ]
        if len(fits) < len(ids):
            logger.warning(
                "skipped %d of %d prompts: prompt + max_new_tokens (%d) exceeds the context of %d tokens",
                len(ids) - len(fits), len(ids), params.max_new_tokens, self.max_context,
            )
        if not fits:
            return out
        requests = [{"prompt_token_ids": ids[i]} for i in fits]
        results = self.llm.generate(requests, self._sampling_params(params), use_tqdm=False)
        for i, result in zip(fits, results, strict=True):
            out[i] = [self._completion(o) for o in result.outputs]
        return out

    def _sampling_params(self, params: SamplingParams) -> Any:
        return self.sampling_params_cls(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            logprobs=0,  # 0: only the sampled token's log-probability
            stop_token_ids=list(self.stop_ids),
            skip_special_tokens=True,
        )

    def _completion(self, output: Any) -> Completion:
        """Map one vLLM ``CompletionOutput``; the stop token stays in the ids, not the text."""
        token_ids = list(output.token_ids)
        if output.logprobs is None or len(output.logprobs) != len(token_ids):
            raise WinnowError("vLLM returned no per-token logprobs; the sampling parameters ask for logprobs=0")
        logprobs = [float(step[t].logprob) for step, t in zip(output.logprobs, token_ids, strict=True)]
        text = output.text
        stopped = output.finish_reason == "stop"
        if stopped and token_ids and token_ids[-1] in self.stop_ids:
            # vLLM drops special stop tokens from the text; a non-special one would remain.
            mark = self.tokenizer.decode([token_ids[-1]])
            text = text[: -len(mark)] if mark and text.endswith(mark) else text
        return Completion(text, token_ids, logprobs, finish_reason(text, stopped))


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise WinnowError("the vllm backend needs vLLM: pip install 'winnow[vllm]'") from err
    return vllm


def _max_model_len(llm: Any) -> int | None:
    """The engine's context length, if this vLLM version exposes it where we look."""
    engine = getattr(llm, "llm_engine", None)
    config = getattr(engine, "model_config", None)
    value = getattr(config, "max_model_len", None)
    return value if isinstance(value, int) else None
