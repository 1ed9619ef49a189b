"""Unit tests of the generation backends (CPU, seconds).

Run: .venv/bin/python -m pytest tests/unit/test_generation.py -q

The HF backend runs on a scrambled copy of the tiny model: a freshly initialised tiny Llama
with tied embeddings mostly repeats its last input token, which would let a padding or
position bug go unnoticed, so its layers get larger random weights and its logits a larger
scale. `stop_at` makes the model itself emit ``<|im_end|>`` from a given position on, by
adding to that logit in the model's output (generation and the reference loops see the same
model), so stop handling is exercised without training.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from winnow.data import Example, encode
from winnow.errors import WinnowError
from winnow.generation import (
    Completion,
    FakeGenerator,
    HFGenerator,
    SamplingParams,
    VLLMGenerator,
    make_generator,
)
from winnow.generation.base import prompt_token_ids, stop_token_ids
from winnow.generation.fake import RESPONSES, STOP_ID
from winnow.models import add_lora

CPU = torch.device("cpu")
GREEDY = SamplingParams(max_new_tokens=10, temperature=0)
SAMPLE = SamplingParams(max_new_tokens=8, temperature=0.8, top_p=0.95, n=3, seed=1)


@pytest.fixture(scope="module")
def scrambled(tiny_pair) -> torch.nn.Module:
    model = copy.deepcopy(tiny_pair[0])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        model.model.norm.weight.mul_(30.0)  # peaked next-token distributions: no near-ties
    return model.eval()


@pytest.fixture
def prompts(corpus) -> list[list[dict[str, str]]]:
    """Three prompts of clearly different token lengths (left padding matters)."""
    return [
        [{"role": "user", "content": corpus[0][0]}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": corpus[1][0]}],
        [{"role": "user", "content": " ".join(q for q, _ in corpus[2:6])}],
    ]


@contextmanager
def stop_at(model: torch.nn.Module, position: int, stop_id: int) -> Iterator[None]:
    """Make ``stop_id`` the model's choice at every position ``>= position``."""

    def hook(module, args, kwargs, output):
        logits = output.logits  # (B, T', V); T' < T when generate keeps only the last position
        pos = kwargs.get("position_ids")
        if pos is None:
            ids = kwargs["input_ids"]
            pos = torch.arange(ids.shape[1]).expand_as(ids)  # (B, T)
        logits[..., stop_id] += 1e3 * (pos[:, -logits.shape[1] :] >= position)
        return output

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def greedy_reference(model, ids: list[int], max_new: int, stops: list[int]) -> list[int]:
    """Greedy decoding by hand: full forward pass, argmax of the last logits, repeat."""
    x = torch.tensor([ids])  # (1, T)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(input_ids=x).logits[0, -1].argmax())
            out.append(token)
            x = torch.cat([x, torch.tensor([[token]])], dim=1)
            if token in stops:
                break
    return out


def forward_logprobs(model, prompt: list[int], generated: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) at each generated token, from one forward pass over prompt + generation."""
    x = torch.tensor([prompt + generated])  # (1, T)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, len(prompt) - 1 : -1]  # (G, V)
    scale = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / scale, dim=-1).gather(1, torch.tensor(generated)[:, None])[:, 0]


# --- HF backend: greedy --------------------------------------------------------------------


def test_greedy_matches_hand_rolled_loop(scrambled, tiny_pair, prompts) -> None:
    tok = tiny_pair[1]
    ids = [prompt_token_ids(tok, p) for p in prompts]
    assert len({len(x) for x in ids}) == 3
    stops = stop_token_ids(tok)
    # The shortest prompt stops after 4 tokens; the longer ones already reach the stop
    # position, so they stop at once (empty) while the batch keeps running for the first.
    position = min(len(x) for x in ids) + 3
    with stop_at(scrambled, position, tok.eos_token_id):
        got = HFGenerator(scrambled, tok, device=CPU).generate(prompts, GREEDY)
        want = [greedy_reference(scrambled, x, GREEDY.max_new_tokens, stops) for x in ids]
    assert [c[0].token_ids for c in got] == want
    assert {c[0].finish_reason for c in got} >= {"stop", "empty"}


def test_greedy_batched_equals_one_at_a_time(scrambled, tiny_pair, prompts) -> None:
    tok = tiny_pair[1]
    batched = HFGenerator(scrambled, tok, device=CPU, batch_size=16).generate(prompts, GREEDY)
    single = HFGenerator(scrambled, tok, device=CPU, batch_size=1).generate(prompts, GREEDY)
    for b, s in zip(batched, single, strict=True):
        assert (b[0].text, b[0].token_ids, b[0].finish_reason) == (s[0].text, s[0].token_ids, s[0].finish_reason)
        torch.testing.assert_close(torch.tensor(b[0].logprobs), torch.tensor(s[0].logprobs), atol=1e-5, rtol=0)
    # The model does not just repeat itself: the prompts get different answers.
    assert len({tuple(c[0].token_ids) for c in batched}) == 3


@pytest.mark.parametrize("params", [GREEDY, SAMPLE], ids=["greedy", "sampled"])
def test_logprobs_equal_forward_pass(scrambled, tiny_pair, prompts, params) -> None:
    tok = tiny_pair[1]
    out = HFGenerator(scrambled, tok, device=CPU).generate(prompts, params)
    for prompt, comps in zip(prompts, out, strict=True):
        ids = prompt_token_ids(tok, prompt)
        for c in comps:
            assert len(c.logprobs) == len(c.token_ids) > 0
            want = forward_logprobs(scrambled, ids, c.token_ids, params.temperature)
            torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=1e-4, rtol=0)


# --- HF backend: sampling ------------------------------------------------------------------


def test_sampling_is_reproducible_from_the_seed(scrambled, tiny_pair, prompts) -> None:
    gen = HFGenerator(scrambled, tiny_pair[1], device=CPU)
    state = torch.get_rng_state()
    first = gen.generate(prompts, SAMPLE)
    again = gen.generate(prompts, SAMPLE)
    other = gen.generate(prompts, replace(SAMPLE, seed=2))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone

    def ids(out: list[list[Completion]]) -> list[list[list[int]]]:
        return [[c.token_ids for c in comps] for comps in out]

    assert ids(first) == ids(again)
    assert ids(first) != ids(other)


def test_n_completions_per_prompt(scrambled, tiny_pair, prompts) -> None:
    gen = HFGenerator(scrambled, tiny_pair[1], device=CPU, batch_size=4)  # 1 prompt x 3 samples a batch
    sampled = gen.generate(prompts, SAMPLE)
    assert [len(c) for c in sampled] == [3, 3, 3]
    assert all(len({tuple(c.token_ids) for c in comps}) > 1 for comps in sampled)
    greedy = gen.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0, n=2))
    for a, b in greedy:
        assert a == b and a is not b and a.token_ids is not b.token_ids


# --- HF backend: stopping and finish reasons -----------------------------------------------


def test_stop_token_kept_in_ids_not_in_text(scrambled, tiny_pair, prompts) -> None:
    tok = tiny_pair[1]
    short = prompts[0]
    position = len(prompt_token_ids(tok, short)) + 3
    with stop_at(scrambled, position, tok.eos_token_id):
        # The longest prompt keeps the batch running after the short one stopped.
        stopped, empty = (c[0] for c in HFGenerator(scrambled, tok, device=CPU).generate([short, prompts[2]], GREEDY))
    assert stopped.finish_reason == "stop"
    assert len(stopped.token_ids) == 5 and stopped.token_ids[-1] == tok.eos_token_id
    assert tok.eos_token_id not in stopped.token_ids[:-1]
    assert "<|im_end|>" not in stopped.text and stopped.text == tok.decode(stopped.token_ids[:-1])
    assert len(stopped.logprobs) == 5
    assert (empty.finish_reason, empty.text, empty.token_ids) == ("empty", "", [tok.eos_token_id])


def test_length_finish_reason(scrambled, tiny_pair, prompts) -> None:
    gen = HFGenerator(scrambled, tiny_pair[1], device=CPU)
    out = gen.generate(prompts, SamplingParams(max_new_tokens=4, temperature=0))
    for (c,) in out:
        assert c.finish_reason == "length" and len(c.token_ids) == len(c.logprobs) == 4


def test_too_long_prompts_are_skipped(scrambled, tiny_pair, prompts, caplog) -> None:
    tok = tiny_pair[1]
    lengths = [len(prompt_token_ids(tok, p)) for p in prompts]
    limit = sorted(lengths)[1] + GREEDY.max_new_tokens  # the longest prompt does not fit
    gen = HFGenerator(scrambled, tok, device=CPU, max_context=limit)
    with caplog.at_level(logging.WARNING, logger="winnow.generation.hf"):
        out = gen.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0, n=2))
    full = HFGenerator(scrambled, tok, device=CPU).generate(prompts, GREEDY)
    for k, comps in enumerate(out):
        if lengths[k] == max(lengths):
            assert [(c.finish_reason, c.text, c.token_ids) for c in comps] == [("too_long", "", [])] * 2
        else:
            assert [c.token_ids for c in comps] == [full[k][0].token_ids] * 2
    assert "skipped 1 of 3 prompts" in caplog.text
    assert scrambled.config.max_position_embeddings == HFGenerator(scrambled, tok).max_context


# --- HF backend: peft, modes, tokenisation -------------------------------------------------


def test_peft_model_and_train_mode_restored(scrambled, tiny_pair, prompts) -> None:
    tok = tiny_pair[1]
    base_out = HFGenerator(scrambled, tok, device=CPU).generate(prompts, GREEDY)
    peft = add_lora(copy.deepcopy(scrambled), r=4, alpha=8)
    peft.train()
    peft.base_model.model.model.layers[0].eval()  # one submodule deliberately in eval mode
    out = HFGenerator(peft, tok, device=CPU).generate(prompts, GREEDY)
    # LoRA's B starts at zero, so the adapter does not change the model yet.
    assert [c[0].token_ids for c in out] == [c[0].token_ids for c in base_out]
    assert peft.training and not peft.base_model.model.model.layers[0].training
    assert peft.base_model.model.model.layers[1].training


class AddsBos:
    """The tiny tokenizer, but adding BOS itself as Llama-style tokenizers do."""

    def __init__(self, tok, chat_template: str | None) -> None:
        self._tok = tok
        self.chat_template = chat_template

    def __getattr__(self, name: str):
        return getattr(self._tok, name)

    def __call__(self, text: str, add_special_tokens: bool = True, **kwargs):
        ids = self._tok(text, add_special_tokens=False, **kwargs)["input_ids"]
        return {"input_ids": [self._tok.bos_token_id] * add_special_tokens + ids}


@pytest.mark.parametrize("template", [True, False], ids=["template-writes-bos", "plain-template"])
def test_prompt_ids_equal_training_encoding(tiny_pair, corpus, template) -> None:
    tok = tiny_pair[1]
    wrapped = AddsBos(tok, tok.chat_template if template else None)
    ex = Example.from_pair(corpus[0][0], corpus[0][1], system="Be brief.")
    ids = prompt_token_ids(wrapped, ex.prompt_messages)
    assert encode(wrapped, ex, max_length=512).input_ids[: len(ids)] == ids
    # BOS exactly once at the start: written by the ChatML template (its BOS is <|im_start|>),
    # or prepended because the plain template does not write it.
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_device_mismatch_is_reported(scrambled, tiny_pair, prompts) -> None:
    gen = HFGenerator(scrambled, tiny_pair[1], device=torch.device("meta"))
    with pytest.raises(WinnowError, match="model is on cpu"):
        gen.generate(prompts, GREEDY)


# --- fake backend --------------------------------------------------------------------------


def test_fake_generator_is_deterministic(prompts) -> None:
    params = SamplingParams(max_new_tokens=32, n=4, seed=3)
    first = FakeGenerator().generate(prompts, params)
    assert first == FakeGenerator().generate(prompts, params)
    assert first != FakeGenerator().generate(prompts, SamplingParams(max_new_tokens=32, n=4, seed=4))
    for comps in first:
        assert len(comps) == 4
        for c in comps:
            assert c.text in RESPONSES and c.finish_reason == "stop"
            assert len(c.token_ids) == len(c.text.split()) + 1 and c.token_ids[-1] == STOP_ID
            assert len(c.logprobs) == len(c.token_ids) and all(-1.0 <= lp <= -0.1 for lp in c.logprobs)
    greedy = FakeGenerator().generate(prompts, SamplingParams(temperature=0, n=3))
    assert all(a == b == c for a, b, c in greedy)


def test_fake_generator_length_empty_and_tokenizer(tiny_pair) -> None:
    tok = tiny_pair[1]
    seen = []

    def respond(text: str, k: int, seed: int) -> str:
        seen.append((text, k, seed))
        return "   " if k == 1 else "one two three four five"

    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q?"}]
    full, blank = FakeGenerator(respond).generate([prompt], SamplingParams(max_new_tokens=3, n=2, seed=7))[0]
    assert seen == [("Q?", 0, 7), ("Q?", 1, 7)]
    assert (full.text, len(full.token_ids), full.finish_reason) == ("one two three", 3, "length")
    assert (blank.text.strip(), blank.token_ids, blank.finish_reason) == ("", [STOP_ID], "empty")
    (c,) = FakeGenerator(respond, tokenizer=tok).generate([prompt], SamplingParams(max_new_tokens=64))[0]
    assert c.token_ids[-1] == tok.eos_token_id and tok.decode(c.token_ids[:-1]) == c.text
    assert c.finish_reason == "stop"


# --- vLLM backend against a stand-in -------------------------------------------------------


class StandInLLM:
    """Mimics ``vllm.LLM``: ``get_tokenizer`` and ``generate`` returning RequestOutput-like objects."""

    def __init__(self, tokenizer, replies: list[list[tuple[list[int], str]]]) -> None:
        self.tokenizer = tokenizer
        self.replies = replies
        self.calls: list[tuple[list[dict], SimpleNamespace]] = []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params))
        eos = self.tokenizer.eos_token_id
        out = []
        for prompt, replies in zip(prompts, self.replies, strict=False):
            outputs = []
            for ids, reason in replies[: sampling_params.n]:
                # logprobs: per step a dict token id -> Logprob (the sampled token and one other)
                steps = [{t: SimpleNamespace(logprob=-0.5 * (j + 1)), t + 1: SimpleNamespace(logprob=-9.0)}
                         for j, t in enumerate(ids)]
                text = self.tokenizer.decode([t for t in ids if t != eos])
                outputs.append(SimpleNamespace(text=text, token_ids=tuple(ids), logprobs=steps, finish_reason=reason))
            out.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=outputs))
        return out


def test_vllm_adapter_maps_parameters_and_outputs(tiny_pair, prompts) -> None:
    tok = tiny_pair[1]
    eos = tok.eos_token_id
    words = tok("seven plus two", add_special_tokens=False)["input_ids"]
    llm = StandInLLM(tok, [[(words + [eos], "stop"), (words[:2], "length")], [([eos], "stop"), (words, "length")]])
    gen = make_generator("vllm", llm, None, sampling_params_cls=SimpleNamespace)
    params = SamplingParams(max_new_tokens=5, temperature=0.7, top_p=0.9, n=2, seed=11)
    out = gen.generate(prompts[:2], params)

    sent, sp = llm.calls[0]
    assert [p["prompt_token_ids"] for p in sent] == [prompt_token_ids(tok, p) for p in prompts[:2]]
    assert (sp.temperature, sp.top_p, sp.max_tokens, sp.n, sp.seed, sp.logprobs) == (0.7, 0.9, 5, 2, 11, 0)
    assert eos in sp.stop_token_ids
    (a, b), (c, d) = out
    assert (a.text, a.token_ids, a.finish_reason) == ("seven plus two", words + [eos], "stop")
    assert a.logprobs == [-0.5 * (j + 1) for j in range(len(words) + 1)]
    assert (b.finish_reason, b.token_ids) == ("length", words[:2])
    assert (c.finish_reason, c.token_ids) == ("empty", [eos])
    assert d.finish_reason == "length"


def test_vllm_adapter_skips_too_long_and_needs_logprobs(tiny_pair, prompts) -> None:
    tok = tiny_pair[1]
    lengths = [len(prompt_token_ids(tok, p)) for p in prompts]
    llm = StandInLLM(tok, [[([tok.eos_token_id], "stop")]] * 3)
    gen = VLLMGenerator(llm, tok, sampling_params_cls=SimpleNamespace, max_context=min(lengths) + 8)
    out = gen.generate(prompts, SamplingParams(max_new_tokens=8))
    assert [c[0].finish_reason for c in out] == ["empty" if n == min(lengths) else "too_long" for n in lengths]
    assert len(llm.calls[0][0]) == 1

    bad = StandInLLM(tok, [[([tok.eos_token_id], "stop")]])
    bad.generate = lambda *a, **k: [SimpleNamespace(outputs=[SimpleNamespace(
        text="", token_ids=[tok.eos_token_id], logprobs=None, finish_reason="stop")])]
    with pytest.raises(WinnowError, match="logprobs"):
        VLLMGenerator(bad, sampling_params_cls=SimpleNamespace).generate(prompts[:1], SamplingParams())


def test_vllm_is_imported_only_on_demand(monkeypatch) -> None:
    import winnow.generation.vllm  # noqa: F401

    assert "vllm" not in sys.modules
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    with pytest.raises(WinnowError, match="pip install"):
        VLLMGenerator("some/model")


# --- factory -------------------------------------------------------------------------------


def test_make_generator(scrambled, tiny_pair) -> None:
    tok = tiny_pair[1]
    assert isinstance(make_generator("hf", scrambled, tok, device=CPU, batch_size=2), HFGenerator)
    fake = make_generator("fake", None, tok)
    assert isinstance(fake, FakeGenerator) and fake.tokenizer is tok
    with pytest.raises(WinnowError, match="unknown generation backend"):
        make_generator("openai", None, tok)
