"""Winnow: curate LLM fine-tuning data against a small trusted validation set."""

from winnow.errors import InputError, WinnowError

__version__ = "0.1.0"

__all__ = ["InputError", "WinnowError", "__version__"]
