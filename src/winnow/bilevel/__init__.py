"""Bilevel weighting: weight maps and the BDS loop (BMO weights arrive with the refine stage)."""

from winnow.bilevel.bds import BDSResult, Indexed, PairedModel, TwoCopies, learn_weights, score_pool
from winnow.bilevel.weights import entropy_term, logits_from_weights, weight_stats, weights_from_logits

__all__ = [
    "BDSResult",
    "Indexed",
    "PairedModel",
    "TwoCopies",
    "entropy_term",
    "learn_weights",
    "logits_from_weights",
    "score_pool",
    "weight_stats",
    "weights_from_logits",
]
