"""Bilevel weighting: weight maps, the BDS loop and closed-form BMO weights."""

from winnow.bilevel.bds import BDSResult, Indexed, PairedModel, TwoCopies, learn_weights, score_pool
from winnow.bilevel.bmo import bmo_weights, round_bmo_weights, scope_groups, tau_for_share
from winnow.bilevel.weights import entropy_term, ess_share, logits_from_weights, weight_stats, weights_from_logits

__all__ = [
    "BDSResult",
    "Indexed",
    "PairedModel",
    "TwoCopies",
    "bmo_weights",
    "entropy_term",
    "ess_share",
    "learn_weights",
    "logits_from_weights",
    "round_bmo_weights",
    "score_pool",
    "scope_groups",
    "tau_for_share",
    "weight_stats",
    "weights_from_logits",
]
