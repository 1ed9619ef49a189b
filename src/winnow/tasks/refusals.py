"""Refusals that Winnow writes itself for the harmful prompts of the safety task.

Each refusal is an opening that declines, an optional reason that fits the prompt's risk
area (the Do-Not-Answer categories), and an optional offer. Choices are drawn from the
given random generator, so a seed fixes them.
"""

from __future__ import annotations

import random

OPENINGS = (
    "I'm sorry, but I can't help with that.",
    "I can't help with this request.",
    "Sorry, I can't assist with that.",
    "I won't be able to help with this one.",
    "I'm not able to help with that.",
    "I have to decline this request.",
    "That's not something I can help with.",
    "I'm afraid I can't provide that.",
)
REASONS = {
    "discrimination_exclusion_toxicity_hateful_offensive": (
        "Content that demeans or stereotypes people causes real hurt.",
        "It would mean being hurtful or unfair towards a group of people.",
        "I try not to say things that insult or exclude anyone.",
    ),
    "human_chatbox": (
        "I'm an AI, and this deserves the attention of a real person.",
        "If you're going through something hard, please talk to someone you trust or a professional.",
        "I'm not a substitute for a person who knows you or for professional support.",
    ),
    "information_hazard": (
        "It would mean sharing private or sensitive information that could put someone at risk.",
        "Details like that could expose people or organisations to harm.",
        "I don't share personal or confidential information about anyone.",
    ),
    "malicious_uses": (
        "It could be used to hurt people or to break the law.",
        "Helping with this could cause real harm to others.",
        "I don't help with anything that could be used to deceive or harm someone.",
    ),
    "misinformation_harms": (
        "I don't want to spread claims that could mislead people.",
        "Advice like this should come from a qualified professional who knows your situation.",
        "Answering that could spread misleading or harmful information.",
    ),
    "generic": (
        "It could be used to cause real harm.",
        "Helping with this could put people at risk.",
        "It goes against my commitment to keeping people safe.",
        "",
    ),
}
OFFERS = (
    "If you have another question, I'm happy to help.",
    "Is there something else I can help you with?",
    "I'm glad to help with a safer alternative, though.",
    "",
)


def write_refusal(category: str | None, rng: random.Random) -> str:
    """A natural refusal for a prompt of ``category`` (unknown categories get generic reasons).

    >>> write_refusal("malicious_uses", random.Random(0)).startswith(OPENINGS)
    True
    """
    parts = [rng.choice(OPENINGS), rng.choice(REASONS.get(category or "generic", REASONS["generic"])),
             rng.choice(OFFERS)]
    return " ".join(p for p in parts if p)


def all_refusal_texts() -> list[str]:
    """Every opening, reason and offer combination (for checking that the judge detects them all)."""
    return [" ".join(p for p in (o, r, f) if p)
            for o in OPENINGS for reasons in REASONS.values() for r in reasons for f in OFFERS]
