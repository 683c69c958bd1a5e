"""Comparing an answer's text with reference answers, as SQuAD does (Rajpurkar et al., 2016):
both are normalised (case, punctuation, articles, spacing) before they are compared; exact match
and token F1 take the best over every accepted answer; "contains" asks whether an accepted answer
appears as whole words. Shared by the evaluation's scores, the after-training check and the
training rows built from documents.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces ("The 45-day period." -> "45 day
    period"); a currency sign is a word of its own ("£60" -> "£ 60", which contains "60")."""
    text = "".join(map(_spaced, unicodedata.normalize("NFKC", text).casefold()))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _spaced(c: str) -> str:
    kind = unicodedata.category(c)
    if kind == "Sc":  # a currency sign, "$" included
        return f" {c} "
    return " " if c in string.punctuation or kind.startswith("P") else c


def exact_match(prediction: str, accepted: Sequence[str]) -> bool:
    guess = normalise(prediction)
    return any(guess == normalise(answer) for answer in accepted if answer.strip())


def token_f1(prediction: str, accepted: Sequence[str]) -> float:
    """Overlap of words between the answer and the closest accepted answer, 0 to 1."""
    best = 0.0
    guess = normalise(prediction).split()
    for answer in accepted:
        truth = normalise(answer).split()
        if not truth or not guess:
            continue
        common = sum((Counter(guess) & Counter(truth)).values())
        if common:
            precision, recall = common / len(guess), common / len(truth)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains(text: str, accepted: Sequence[str]) -> bool:
    """Whether an accepted answer appears in `text` as whole words, after normalising both."""
    haystack = f" {normalise(text)} "
    return any(f" {needle} " in haystack for answer in accepted if (needle := normalise(answer)))
