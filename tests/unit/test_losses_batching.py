"""Per-example losses against a hand computation; batches carry their indices."""

from __future__ import annotations

import math

import torch

from winnow.data import collate, encode_all, epoch_batches, padding_fraction
from winnow.data.formatting import Encoded
from winnow.losses import IGNORE_INDEX, per_example_nll, token_logprobs, weighted_mean
from winnow.step import batch_losses


def test_per_example_nll_equals_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 1], [IGNORE_INDEX, 2, 6, IGNORE_INDEX, IGNORE_INDEX]])
    expect = []
    for b in range(2):
        terms = []
        for t in range(1, 5):  # token t is predicted from position t-1
            if labels[b, t] != IGNORE_INDEX:
                p = torch.softmax(logits[b, t - 1], -1)[labels[b, t]]
                terms.append(-math.log(p.item()))
        expect.append((sum(terms) / len(terms), sum(terms)))
    got_mean = per_example_nll(logits, labels, "mean")
    got_sum = per_example_nll(logits, labels, "sum")
    assert torch.allclose(got_mean, torch.tensor([e[0] for e in expect]), atol=1e-6)
    assert torch.allclose(got_sum, torch.tensor([e[1] for e in expect]), atol=1e-6)
    logp, mask = token_logprobs(logits, labels)
    assert mask.sum().item() == 5 and (logp[~mask] == 0).all()


def test_weighted_mean():
    losses = torch.tensor([1.0, 2.0, 3.0])
    assert weighted_mean(losses).item() == 2.0
    assert weighted_mean(losses, torch.tensor([3.0, 0.0, 0.0])).item() == 1.0


def test_batch_losses_match_single_examples_and_index_aligns(tiny, examples):
    """Padding does not change an example's loss, and ``index`` says whose loss is whose."""
    model, tok = tiny
    model.eval()
    enc = encode_all(tok, examples[:6], max_length=128)
    order = [4, 0, 5, 2]
    batch = collate([enc.items[i] for i in order], order, tok.pad_token_id)
    with torch.no_grad():
        together = batch_losses(model, batch)
        alone = torch.stack([batch_losses(model, collate([enc.items[i]], [i], tok.pad_token_id))[0]
                             for i in range(6)])
    weights = torch.arange(6, dtype=torch.float)  # a weight per dataset position
    assert batch["index"].tolist() == order
    assert torch.allclose(together, alone[batch["index"]], atol=1e-5)
    assert torch.allclose(weights[batch["index"]] * together, weights[order] * alone[order], atol=1e-5)


def test_epoch_batches_deterministic_complete_and_less_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(10, 400) for _ in range(500)]
    a = epoch_batches(lengths, 8, seed=3, epoch=1)
    assert a == epoch_batches(lengths, 8, seed=3, epoch=1)
    assert a != epoch_batches(lengths, 8, seed=3, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(500))
    plain = epoch_batches(lengths, 8, seed=3, epoch=1, group_by_length=False)
    assert padding_fraction(lengths, a) < 0.1 < padding_fraction(lengths, plain)


def test_collate_pads_right():
    b = collate([Encoded([1, 2, 3], [IGNORE_INDEX, 2, 3]), Encoded([4], [4])], [7, 9], pad_id=0)
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"][1].tolist() == [4, IGNORE_INDEX, IGNORE_INDEX]


def test_head_on_targets_only_equals_full_logits(tiny, examples):
    """The fast path (head on response positions) gives the full-logits losses and gradients."""
    import copy

    from winnow.models import add_lora

    model, tok = tiny
    enc = encode_all(tok, examples[:5], max_length=128)
    batch = collate(enc.items, list(range(5)), tok.pad_token_id)
    for m in (model, add_lora(copy.deepcopy(model), r=4)):
        ref = copy.deepcopy(m)
        fast = batch_losses(m, batch, "sum")
        out = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        full = per_example_nll(out.logits, batch["labels"], "sum")
        assert torch.allclose(fast, full, atol=1e-4)
        fast.sum().backward()
        full.sum().backward()
        for (name, p), (_, q) in zip(m.named_parameters(), ref.named_parameters(), strict=True):
            if p.requires_grad:
                assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name
