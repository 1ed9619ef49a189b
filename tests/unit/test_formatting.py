"""Loss masks: response tokens only, the end-of-turn token a target, multi-turn, truncation."""

from __future__ import annotations

import pytest

from winnow.data import Example, encode, encode_all, render_prompt
from winnow.losses import IGNORE_INDEX

CONV = Example(
    id="c",
    messages=(
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "2 plus 2 is 4."},
        {"role": "user", "content": "What is 3 plus 3?"},
        {"role": "assistant", "content": "3 plus 3 is 6."},
    ),
)


def _targets(tok, enc) -> str:
    return tok.decode([t for t in enc.labels if t != IGNORE_INDEX])


def test_response_only_and_end_of_turn_is_a_target(tiny_pair):
    _, tok = tiny_pair
    ex = Example.from_pair("What is 1 plus 2?", "1 plus 2 is 3.")
    enc = encode(tok, ex, max_length=256)
    assert _targets(tok, enc) == "1 plus 2 is 3.<|im_end|>\n"
    assert tok.eos_token_id in [t for t in enc.labels if t != IGNORE_INDEX]
    # the context is exactly the prompt a generator would see
    n_ctx = enc.labels.index(next(t for t in enc.labels if t != IGNORE_INDEX))
    assert tok.decode(enc.input_ids[:n_ctx]) == render_prompt(tok, ex)


def test_multi_turn_all_and_last(tiny_pair):
    _, tok = tiny_pair
    both = _targets(tok, encode(tok, CONV, max_length=256))
    assert both == "2 plus 2 is 4.<|im_end|>\n3 plus 3 is 6.<|im_end|>\n"
    last = _targets(tok, encode(tok, CONV, max_length=256, train_on="last"))
    assert last == "3 plus 3 is 6.<|im_end|>\n"
    assert "What is" not in both


def test_plain_fallback_template(tiny_pair):
    import copy

    _, tok = tiny_pair
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    enc = encode(plain, Example.from_pair("Hi", "Hello there"), max_length=256)
    assert plain.decode(enc.input_ids) == "User: Hi\nAssistant: Hello there<|im_end|>\n"
    assert _targets(plain, enc) == "Hello there<|im_end|>\n"


def test_truncation_drop_left_and_right(tiny_pair):
    _, tok = tiny_pair
    ex = Example.from_pair("What is 10 plus 20? " * 20, "10 plus 20 is 30.")
    full = encode(tok, ex, max_length=1000)
    assert isinstance(encode(tok, ex, max_length=40, truncation="drop"), str)  # dropped with a reason
    # right (the default, as TRL): the first max_length tokens, while a response token remains
    long_answer = Example.from_pair("What is 10 plus 20?", "It is 30. " * 20)
    whole = encode(tok, long_answer, max_length=1000)
    right = encode(tok, long_answer, max_length=40)
    assert right.input_ids == whole.input_ids[:40] and right.labels == whole.labels[:40]
    assert right.cut == 40 - len(whole) < 0 and 0 < right.n_targets < whole.n_targets
    assert "no response token" in encode(tok, ex, max_length=40)  # the prompt alone fills the window
    left = encode(tok, ex, max_length=40, truncation="left")
    assert len(left) == 40 and left.cut == len(full) - 40
    assert left.labels == full.labels[-40:] and _targets(tok, left) == _targets(tok, full)
    n_resp = full.n_targets
    reason = encode(tok, ex, max_length=n_resp, truncation="left")
    assert isinstance(reason, str) and "response alone" in reason


def test_encode_all_reports(tiny_pair):
    _, tok = tiny_pair
    exs = [Example.from_pair("short?", "yes."), Example.from_pair("long " * 200, "no.")]
    out = encode_all(tok, exs, max_length=64, truncation="drop")
    assert out.index == [0] and out.dropped[0][0] == exs[1].id and "too long" in out.dropped[0][1]
    out = encode_all(tok, exs, max_length=64, truncation="left")
    assert out.index == [0, 1] and out.truncated[0][0] == exs[1].id


def test_non_prefix_consistent_template_is_refused(tiny_pair):
    import copy

    from winnow.errors import WinnowError

    _, tok = tiny_pair
    odd = copy.deepcopy(tok)
    # a template that renders the last turn differently, as some "thinking" templates do
    odd.chat_template = ("{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]"
                         "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    with pytest.raises(WinnowError, match="prefix-consistently"):
        encode(odd, CONV, max_length=256)
