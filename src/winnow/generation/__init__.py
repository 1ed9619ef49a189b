"""The generation seam: the `Generator` protocol and its backends (hf, vllm, fake)."""

from __future__ import annotations

from winnow.generation.base import Completion, FinishReason, Generator, SamplingParams
from winnow.generation.factory import BACKENDS, make_generator
from winnow.generation.fake import FakeGenerator
from winnow.generation.hf import HFGenerator
from winnow.generation.vllm import VLLMGenerator

__all__ = [
    "BACKENDS",
    "Completion",
    "FakeGenerator",
    "FinishReason",
    "Generator",
    "HFGenerator",
    "SamplingParams",
    "VLLMGenerator",
    "make_generator",
]
