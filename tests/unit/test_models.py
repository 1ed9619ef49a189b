"""Unit tests of winnow.models on the built-in tiny model (CPU, seconds).

Run: .venv/bin/python -m pytest tests/unit/test_models.py -q
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from winnow import smollm2
from winnow.errors import WinnowError
from winnow.models import (
    BUILTIN_MODELS,
    add_lora,
    build_tiny,
    count_parameters,
    default_dtype,
    load_model,
    trainable_parameters,
    use_adapter,
)

TEXTS = [
    f"Question {i}: what is {i} plus {i}? Answer: {2 * i}. The fox jumps over the dog."
    for i in range(100)
]
SMALL = {"hidden_size": 32, "num_heads": 2, "num_layers": 2, "max_positions": 128}


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    return build_tiny(TEXTS, **SMALL)


def _ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt")["input_ids"]  # (1, T)


# --- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_is_deterministic() -> None:
    _, first = build_tiny(TEXTS, **SMALL)
    _, second = build_tiny(list(TEXTS), **SMALL)
    assert first.get_vocab() == second.get_vocab()
    assert first("Question 7: the dog")["input_ids"] == second("Question 7: the dog")["input_ids"]


def test_vocab_follows_texts(tiny) -> None:
    model, tokenizer = tiny
    _, other = build_tiny(["completely different words here"] * 20, **SMALL)
    assert other.get_vocab() != tokenizer.get_vocab()
    assert model.config.vocab_size == len(tokenizer)


def test_end_of_turn_is_one_token_and_eos(tiny) -> None:
    model, tokenizer = tiny
    ids = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.eos_token_id]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.eos_token_id == model.generation_config.eos_token_id == ids[0]
    assert model.config.pad_token_id == model.generation_config.pad_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_byte_level_round_trip(tiny) -> None:
    _, tokenizer = tiny
    text = "Unseen wörds, 你好 and émojis 🙂"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template(tiny) -> None:
    _, tokenizer = tiny
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what is 2 plus 2?"},
        {"role": "assistant", "content": "4"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nwhat is 2 plus 2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(
        messages[1:2], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nwhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.eos_token_id) == 3


# --- model ---------------------------------------------------------------------------------


def test_same_seed_same_weights_and_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, _ = build_tiny(TEXTS, seed=1, **SMALL)
    assert torch.equal(torch.rand(3), expected)  # the global RNG stream is not consumed
    second, _ = build_tiny(TEXTS, seed=1, **SMALL)
    third, _ = build_tiny(TEXTS, seed=2, **SMALL)
    one, two, three = (m.state_dict() for m in (first, second, third))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["model.embed_tokens.weight"], three["model.embed_tokens.weight"])


def test_tied_embeddings(tiny) -> None:
    model, _ = tiny
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_save_load_round_trip(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path), device=torch.device("cpu"))
    ids = _ids(tokenizer, "Question 3: what is 3 plus 3?")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.dtype == torch.float32
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert loaded_tok.get_vocab() == tokenizer.get_vocab()
    assert loaded_tok.chat_template == tokenizer.chat_template
    assert (loaded_tok.eos_token, loaded_tok.pad_token) == ("<|im_end|>", "<|pad|>")


def test_load_tiny_by_name() -> None:
    model, tokenizer = load_model(
        "tiny", texts=TEXTS, dtype=torch.float64, attn_implementation="eager", seed=3
    )
    assert model.dtype == torch.float64
    assert model.config._attn_implementation == "eager"
    reference, _ = build_tiny(TEXTS, seed=3)
    assert torch.equal(
        model.get_input_embeddings().weight.float(), reference.get_input_embeddings().weight
    )
    assert len(tokenizer) == model.config.vocab_size


def test_default_dtype_cpu() -> None:
    assert default_dtype(torch.device("cpu")) == torch.float32


# --- errors --------------------------------------------------------------------------------


def test_tiny_needs_texts() -> None:
    with pytest.raises(WinnowError, match="texts"):
        load_model("tiny")


def test_unknown_name_lists_builtins(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(WinnowError) as info:
        load_model(str(missing))
    message = str(info.value)
    assert all(name in message for name in BUILTIN_MODELS)
    assert "does not exist" in message and str(missing) in message


def test_bin_only_folder_is_refused(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(WinnowError, match="only safetensors"):
        load_model(str(tmp_path))


# --- LoRA ----------------------------------------------------------------------------------


def _step(model, ids: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def _snapshot(model, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{adapter}." in n}


def test_two_adapters_train_independently() -> None:
    base, tokenizer = build_tiny(TEXTS, **SMALL)
    model = add_lora(base, adapters=("upper", "lower"), r=4, alpha=8)
    names = [n for n, _ in model.named_parameters()]
    upper = [n for n in names if ".upper." in n]
    lower = [n for n in names if ".lower." in n]
    assert upper and len(upper) == len(lower)
    # Distinct parameter sets, not views of one another.
    params = dict(model.named_parameters())
    assert not {params[n].data_ptr() for n in upper} & {params[n].data_ptr() for n in lower}
    # The first adapter starts active; base and the other adapter are frozen.
    assert set(trainable_parameters(model)) == set(upper)
    base_before = {n: p.detach().clone() for n, p in params.items() if "lora_" not in n}

    # One optimiser over both adapters: the inactive one has no grad and is skipped.
    lora_params = [params[n] for n in upper + lower]
    optimizer = torch.optim.AdamW(lora_params, lr=1e-2)
    ids = _ids(tokenizer, "Question 5: what is 5 plus 5? Answer: 10.")

    lower_before, upper_before = _snapshot(model, "lower"), _snapshot(model, "upper")
    _step(model, ids, optimizer)
    assert all(torch.equal(p, lower_before[n]) for n, p in _snapshot(model, "lower").items())
    assert any(not torch.equal(p, upper_before[n]) for n, p in _snapshot(model, "upper").items())

    use_adapter(model, "lower")
    assert set(trainable_parameters(model)) == set(lower)
    upper_after = _snapshot(model, "upper")
    _step(model, ids, optimizer)
    assert all(torch.equal(p, upper_after[n]) for n, p in _snapshot(model, "upper").items())
    assert any(not torch.equal(p, lower_before[n]) for n, p in _snapshot(model, "lower").items())

    for name, before in base_before.items():
        assert torch.equal(params[name], before), name
        assert not params[name].requires_grad


def test_switching_adapter_changes_output() -> None:
    base, tokenizer = build_tiny(TEXTS, **SMALL)
    model = add_lora(base, adapters=("upper", "lower"), r=4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".upper." in name and "lora_B" in name:
                param.fill_(0.1)  # lora_B starts at zero, so both adapters start as identity
    ids = _ids(tokenizer, "Question 1")
    model.eval()
    with torch.no_grad():
        upper = model(ids).logits
        use_adapter(model, "lower")
        lower = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(upper, lower)
    assert torch.allclose(lower, plain)


def test_add_lora_rejects_bad_names_and_counts(tiny) -> None:
    with pytest.raises(WinnowError):
        add_lora(build_tiny(TEXTS, **SMALL)[0], adapters=("a", "a"))
    model = add_lora(build_tiny(TEXTS, **SMALL)[0], adapters=("only",), r=2)
    with pytest.raises(WinnowError, match="no adapter"):
        use_adapter(model, "missing")
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    assert trainable == sum(p.numel() for p in trainable_parameters(model).values())
    _, base_total = count_parameters(tiny[0])
    assert total == base_total + trainable


# --- smollm2 cache (conversion stubbed with the tiny model) --------------------------------


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the SmolLM2 cache at tmp_path and make the conversion build a tiny model."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"not really a gguf" * 1000)
    monkeypatch.setenv("WINNOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(smollm2, "_gguf_path", lambda: gguf)
    monkeypatch.setattr(smollm2, "_model_from_gguf", lambda path: build_tiny(TEXTS, **SMALL))
    return gguf


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WINNOW_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2.cache_dir() == tmp_path / "xdg" / "winnow"
    monkeypatch.setenv("WINNOW_CACHE", str(tmp_path / "mine"))
    assert smollm2.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("WINNOW_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert smollm2.cache_dir() == Path.home() / ".cache" / "winnow"


def test_cache_built_once_and_keyed_by_hash(fake_gguf: Path, monkeypatch) -> None:
    path = smollm2.smollm2_path()
    digest = hashlib.sha256(fake_gguf.read_bytes()).hexdigest()[:16]
    assert path.name == f"smollm2-135m-{digest}"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    monkeypatch.setattr(smollm2, "_model_from_gguf", _fail)  # a second call must not rebuild
    assert smollm2.smollm2_path() == path
    model, tokenizer = load_model("smollm2-135m", device=torch.device("cpu"))
    assert tokenizer.eos_token == "<|im_end|>"


def test_failed_build_leaves_nothing(fake_gguf: Path, monkeypatch) -> None:
    monkeypatch.setattr(smollm2, "_model_from_gguf", _fail)
    with pytest.raises(RuntimeError, match="killed"):
        smollm2.smollm2_path()
    assert list(smollm2.cache_dir().iterdir()) == []


def test_concurrent_builder_wins(fake_gguf: Path, monkeypatch) -> None:
    """Another process finishes the same cache while this one is converting."""

    def build_while_other_finishes(path: Path):
        result = build_tiny(TEXTS, **SMALL)
        target = next(smollm2.cache_dir().glob(".smollm2-135m-*.build-*")).name
        other = smollm2.cache_dir() / target.split(".build-")[0].lstrip(".")
        other.mkdir()
        (other / "config.json").write_text("{}")
        return result

    monkeypatch.setattr(smollm2, "_model_from_gguf", build_while_other_finishes)
    path = smollm2.smollm2_path()
    assert (path / "config.json").read_text() == "{}"  # the other builder's copy is kept
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _fail(path: Path):
    raise RuntimeError("killed mid-build")
