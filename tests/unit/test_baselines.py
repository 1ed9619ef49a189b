"""Baseline scores computed by hand: the instruction-following difficulty (``ifd``)."""

from __future__ import annotations

import pytest
import torch

from winnow.baselines import baseline_scores
from winnow.config import WeighConfig
from winnow.data import Example, collate
from winnow.data.formatting import encode, encode_all
from winnow.losses import sequence_nll
from winnow.step import batch_token_logprobs


def _mean_nll(model, enc, keep: int | None = None) -> float:
    labels = list(enc.labels)
    if keep is not None:  # only the first `keep` response tokens count
        seen = 0
        for t, lab in enumerate(labels):
            if lab != -100:
                labels[t] = lab if seen < keep else -100
                seen += 1
    batch = collate([type(enc)(enc.input_ids, labels)], [0], 0)
    with torch.no_grad():
        return float(sequence_nll(*batch_token_logprobs(model, batch), "mean")[0])


def test_ifd_is_the_loss_given_the_question_over_the_loss_given_none(tiny):
    model, tok = tiny
    pool = [Example.from_pair("What is 2 plus 3?", "2 plus 3 is 5."),
            Example.from_pair("What is 7 plus 1?", "Bananas are yellow."),
            Example.from_pair("What is 4 plus 4?", "4 plus 4 is 8. " * 12)]
    config = WeighConfig(model="tiny", max_length=80, method="ifd")  # the third pair is cut on the right
    enc = encode_all(tok, pool, max_length=80, truncation="right")
    alone = encode_all(tok, [Example.from_pair("", ex.response) for ex in pool], max_length=80, truncation="right")
    assert not enc.dropped and enc.items[2].cut < 0 and enc.items[2].n_targets < alone.items[2].n_targets
    scores = baseline_scores("ifd", model, enc, enc, config, pad_id=tok.pad_token_id, device=torch.device("cpu"),
                             alone=alone)
    for j, ex in enumerate(pool):
        with_q = encode(tok, ex, max_length=80, truncation="right")
        n = with_q.n_targets
        expected = -_mean_nll(model, with_q) / _mean_nll(model, alone.items[j], keep=n)
        assert float(scores[j]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="alone"):
        baseline_scores("ifd", model, enc, enc, config, pad_id=tok.pad_token_id, device=torch.device("cpu"))
