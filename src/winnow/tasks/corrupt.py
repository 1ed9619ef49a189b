"""Text surgery for the built-in tasks: length matching and the corruptions of bad responses."""

from __future__ import annotations

import re

_END = re.compile(r"[.!?][\"')\]]*$")


def ends_sentence(text: str) -> bool:
    """Whether ``text`` ends with sentence-final punctuation.

    >>> ends_sentence("Fine, thanks."), ends_sentence("Fine, thanks")
    (True, False)
    """
    return bool(_END.search(text.rstrip()))
_NUMBERING = re.compile(r"^(?:\d+|[a-z])[.)]$", re.IGNORECASE)


def word_count(text: str) -> int:
    """Number of whitespace-separated words.

    >>> word_count("  Hello there,  world! ")
    3
    """
    return len(text.split())


def _sentence_ends(words: list[str]) -> list[int]:
    """Word counts at which a sentence ends (``words[:n]`` is whole sentences)."""
    return [i + 1 for i, w in enumerate(words) if _END.search(w) and not _NUMBERING.match(w)]


def cut_to_words(text: str, target: int, *, close: bool = False) -> str:
    """``text`` shortened to about ``target`` words, preferably at a sentence end.

    Whitespace (line breaks included) collapses to single spaces. Takes the first sentence
    end in ``[target, target + max(3, target // 2)]``, else the last one in
    ``[2 * target // 3, target)``, else cuts at ``target`` words (dropping a dangling comma or
    colon; ending with a full stop if ``close``).

    >>> cut_to_words("One two. Three four five. Six seven.", 4)
    'One two. Three four five.'
    >>> cut_to_words("Alpha beta gamma delta epsilon zeta eta theta iota kappa", 3)
    'Alpha beta gamma'
    >>> cut_to_words("Short one.", 9)
    'Short one.'
    """
    words = text.split()
    if len(words) <= target:
        return " ".join(words)
    ends = _sentence_ends(words)
    after = [n for n in ends if target <= n <= target + max(3, target // 2)]
    before = [n for n in ends if 2 * target // 3 <= n < target and n > 0]
    if after:
        return " ".join(words[: after[0]])
    if before:
        return " ".join(words[: before[-1]])
    cut = " ".join(words[:target]).rstrip(",;:-–—")
    return cut + "." if close else cut


def fragment(text: str, share: float) -> str:
    """The first ``share`` of the words of ``text`` (at least one), with no closing punctuation.

    >>> fragment("Python is a popular programming language.", 0.5)
    'Python is a'
    """
    words = text.split()
    n = max(1, min(len(words) - 1, round(len(words) * share)))
    return " ".join(words[:n]).rstrip(",;:.!?-–—")


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (split after ``.``, ``!`` or ``?`` followed by a space).

    >>> sentences("Yes. I like it! Do you?")
    ['Yes.', 'I like it!', 'Do you?']
    """
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]
