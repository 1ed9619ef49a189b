"""Batches that carry each example's index, and length grouping that keeps padding low."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from winnow.data.formatting import Encoded
from winnow.losses import IGNORE_INDEX


def collate(items: Sequence[Encoded], index: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; ``index[b]`` is the dataset position of row ``b``.

    >>> b = collate([Encoded([5, 6], [-100, 6]), Encoded([7], [7])], [3, 0], pad_id=0)
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["index"].tolist()
    ([[5, 6], [7, 0]], [[-100, 6], [7, -100]], [3, 0])
    """
    width = max(len(e) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(items), width), dtype=torch.long)  # (B, T)
    for b, e in enumerate(items):
        n = len(e)
        ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(e.labels)
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.tensor(list(index))}


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    group_by_length: bool = True,
    group_size: int = 16,
) -> list[list[int]]:
    """The batches of one epoch: a deterministic function of (seed, epoch).

    Examples are shuffled, cut into groups of ``group_size`` batches, sorted by length inside
    each group (so a batch holds similar lengths), and the batches are shuffled again so
    lengths do not trend over the epoch. Every example appears exactly once.

    >>> sorted(i for b in epoch_batches([3, 1, 2, 5, 4], 2, seed=0, epoch=0) for i in b)
    [0, 1, 2, 3, 4]
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(lengths)
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    if group_by_length:
        span = batch_size * group_size
        order = [
            i for s in range(0, n, span) for i in sorted(order[s : s + span], key=lambda i: -lengths[i])
        ]
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if shuffle and group_by_length:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the tokens in padded batches that are padding.

    >>> padding_fraction([4, 2], [[0, 1]])
    0.25
    """
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1.0 - real / padded if padded else 0.0
