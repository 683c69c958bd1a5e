"""Answers that repeat themselves: found as they stream, whatever engine writes them.

Small models, and adapters trained on too little data, fall into loops ("die für die Bahn, die
für die Bahn, ..."); without a stop they fill every token of the answer. An answer loops when its
end is one piece of text said again and again, exactly: at least three times over at least
`MIN_SPAN` characters (a long sentence twice, `MIN_REPEATS_LONG`, for pieces of `LONG_PERIOD`
characters or more). Lists, tables and numbered steps differ from one item to the next and do
not count. White space counts as one space: a sentence said again, once after a space and once
after a blank line, is the same sentence.
"""

from __future__ import annotations

import re

MAX_PERIOD = 240  # the longest piece whose repetition is looked for, in characters
MIN_SPAN = 48  # the shortest run of repetition that counts
MIN_REPEATS = 3
LONG_PERIOD = 40  # a piece this long said twice in a row is already a loop
MIN_REPEATS_LONG = 2
TAIL = MAX_PERIOD * MIN_REPEATS + 1  # how much of the end of an answer the check needs

NOTICE = "The answer began repeating itself, so it was stopped there."


_SPACES = re.compile(r"\s+")
_RUNS = re.compile(r"\s+|\S+")  # white space and the words between, in turn


def repeated_tail(text: str) -> tuple[int, int] | None:
    """(period, repeats) of the shortest repetition that ends `text` (its white space as single
    spaces), or None when it does not loop."""
    tail = _SPACES.sub(" ", text[-TAIL:])
    if len(tail) < MIN_SPAN:  # most calls, early in an answer: nothing can loop yet
        return None
    for period in range(1, min(MAX_PERIOD, len(tail) // 2) + 1):
        needed = MIN_REPEATS_LONG if period >= LONG_PERIOD else MIN_REPEATS
        span = max(period * needed, MIN_SPAN)
        if span <= len(tail) and tail[-span:-period] == tail[-span + period :]:
            return period, (len(tail) - _start(tail, period)) // period
    return None


def _start(text: str, period: int) -> int:
    """Where the repetition of period `period` that ends `text` begins."""
    start = len(text) - period
    while start > 0 and text[start - 1] == text[start - 1 + period]:
        start -= 1
    return start


def without_repeats(text: str) -> str:
    """`text` with a looping end cut back to its first time round (at a word boundary)."""
    found = repeated_tail(text)
    if found is None:
        return text
    squeezed, origins = _squeezed(text)
    cut_squeezed = _start(squeezed, found[0]) + found[0]
    cut = origins[cut_squeezed] if cut_squeezed < len(origins) else len(text)
    kept = text[:cut]
    if cut < len(text) and text[cut].isalnum() and any(c.isspace() for c in kept):
        kept = kept[: max(i for i, c in enumerate(kept) if c.isspace())]
    return kept.rstrip() + " …"


def _squeezed(text: str) -> tuple[str, list[int]]:
    """`text` with each run of white space as one space, and where each of its characters
    stands in `text`."""
    parts, origins = [], []
    for run in _RUNS.finditer(text):
        if run.group()[0].isspace():
            parts.append(" ")
            origins.append(run.start())
        else:
            parts.append(run.group())
            origins.extend(range(run.start(), run.end()))
    return "".join(parts), origins
