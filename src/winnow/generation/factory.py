"""Pick a generation backend by name (the CLI and configs name backends as strings)."""

from __future__ import annotations

from typing import Any

from winnow.errors import WinnowError
from winnow.generation.base import Generator

BACKENDS = ("hf", "vllm", "fake")


def make_generator(backend: str, model: Any, tokenizer: Any, **kwargs: Any) -> Generator:
    """Build the named backend; ``kwargs`` go to its constructor.

    ``"hf"``: `HFGenerator(model, tokenizer, ...)`; ``"vllm"``: `VLLMGenerator(model, tokenizer, ...)`
    with ``model`` a ``vllm.LLM`` or a model path; ``"fake"``: `FakeGenerator(tokenizer=tokenizer, ...)`,
    ``model`` ignored.

    Raises:
        WinnowError: unknown backend.
    """
    if backend == "hf":
        from winnow.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, **kwargs)
    if backend == "vllm":
        from winnow.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, tokenizer, **kwargs)
    if backend == "fake":
        from winnow.generation.fake import FakeGenerator

        return FakeGenerator(tokenizer=tokenizer, **kwargs)
    raise WinnowError(f'unknown generation backend "{backend}"; choose one of: {", ".join(BACKENDS)}')
