"""After training: does the tuned model now answer like the examples? Said in one sentence.

The worker asks the held-out examples (never trained on) of both the base and the tuned model
and compares the answers with the examples' own:
- when the examples' answers keep saying something their questions do not (a persona's name and
  maker, a sign-off: the "signature"), how many answers of each model say it;
- otherwise, how many of their words each model's answers share with the examples' answers.

The result is kept with the adapter (`studio.json`), with one held-out question and both answers
to show beside the sentence.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from core.text_match import token_f1

MOST_EXAMPLES = 8  # held-out examples asked: enough to see the change, a few seconds on a CPU
SIGNATURE_SHARE = 0.3  # a word in at least this share of the examples' answers ...
QUESTION_SHARE = 0.1  # ... and in at most this share of their questions
BASE_SHARE = 0.25  # ... and rare in the base model's answers: the examples brought it
MOST_WORDS = 3
TOOK_SHARE = 0.6  # the signature in this share of the tuned answers: the training took
CLOSER_BY = 0.1  # otherwise: its answers this much closer to the examples' (word overlap)
_WORD = re.compile(r"[^\W\d_][\w'-]{2,}")


@dataclass(frozen=True)
class Check:
    examples: int
    signature: list[str]  # the words looked for; empty: word overlap compared instead
    tuned: float  # answers with the signature (a count), or the mean word overlap (0-1)
    base: float
    took: bool
    question: str  # one held-out question, with what each model answered and the example's
    expected: str
    base_answer: str
    tuned_answer: str

    @property
    def sentence(self) -> str:
        n = self.examples
        if self.signature:
            quoted = [f"“{w}”" for w in self.signature]
            words = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            said = (
                f"On {n} held-out examples, the tuned model said {words} in {self.tuned:.0f} "
                f"answers, the base model in {self.base:.0f}"
            )
        else:
            said = (
                f"On {n} held-out examples, the tuned model's answers share {self.tuned:.0%} of "
                f"their words with your examples' answers, the base model's {self.base:.0%}"
            )
        verdict = (
            "the training took."
            if self.took
            else "the training has not taken yet: try a longer preset (Balanced or Thorough) "
            "or more examples."
        )
        return f"{said}: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _words(text: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(text)}


def signature(answers: Sequence[str], questions: Sequence[str], base: Sequence[str]) -> list[str]:
    """The words the examples' answers keep saying that neither their questions nor the base
    model's answers do, and that are not everyday English ("can", "here"), most frequent first
    (as written in the answers)."""
    if not answers:
        return []
    in_answers = Counter(w for a in answers for w in _words(a))
    in_questions = Counter(w for q in questions for w in _words(q))
    in_base = Counter(w for a in base for w in _words(a))
    spelled: dict[str, str] = {}
    for answer in answers:
        for word in _WORD.findall(answer):
            spelled.setdefault(word.casefold(), word)
    found = [
        w
        for w, count in in_answers.most_common()
        if count / len(answers) >= SIGNATURE_SHARE
        and w not in ENGLISH_STOP_WORDS
        and in_questions[w] / max(1, len(questions)) <= QUESTION_SHARE
        and in_base[w] / max(1, len(base)) <= BASE_SHARE
    ]
    return [spelled[w] for w in found[:MOST_WORDS]]


def compare(
    questions: Sequence[str],
    expected: Sequence[str],
    base_answers: Sequence[str],
    tuned_answers: Sequence[str],
    train_answers: Sequence[str],
    train_questions: Sequence[str],
) -> Check | None:
    """The check of held-out examples (`questions` with their `expected` answers); the
    signature is learned from the training examples. None without held-out examples."""
    if not questions:
        return None
    words = signature(train_answers, train_questions, base_answers)
    wanted = {w.casefold() for w in words}

    def says(answer: str) -> bool:
        return bool(_words(answer) & wanted)

    n = len(questions)
    if words:
        tuned = float(sum(says(a) for a in tuned_answers))
        base = float(sum(says(a) for a in base_answers))
        took = tuned >= TOOK_SHARE * n and tuned > base
    else:
        tuned = sum(token_f1(a, [e]) for a, e in zip(tuned_answers, expected, strict=True)) / n
        base = sum(token_f1(a, [e]) for a, e in zip(base_answers, expected, strict=True)) / n
        took = tuned >= base + CLOSER_BY
    # The example to show: one where the tuned model says what the base model does not.
    pairs = list(zip(base_answers, tuned_answers, strict=True))
    shown = next((i for i, (b, t) in enumerate(pairs) if says(t) and not says(b)), 0)
    return Check(
        examples=n,
        signature=words,
        tuned=round(tuned, 3),
        base=round(base, 3),
        took=took,
        question=questions[shown],
        expected=expected[shown],
        base_answer=base_answers[shown],
        tuned_answer=tuned_answers[shown],
    )
