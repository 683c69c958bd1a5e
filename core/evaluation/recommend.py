"""The verdict of an evaluation in plain words: LoRA, RAG, both, neither, or not clear yet.

Computed from the per-question right/wrong marks of each mode. One mode "beats" another when the
paired bootstrap interval of their difference on the same questions lies above zero, so a lead
that a few lucky questions could explain is not called a win. Among modes that do equally well,
the cheaper one is recommended: base, then RAG (no training, follows document edits), then LoRA,
then both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.answering.modes import MODES
from core.evaluation.metrics import paired_difference
from core.wording import plural, short_duration

FEW_QUESTIONS = 20
# Below this, no lead is called a win: a bootstrap of 1-4 identical differences has no spread,
# and even 4 of 4 against 0 of 4 happens by chance 1 time in 16 (a sign test).
MIN_TO_DECIDE = 5
GOOD_ENOUGH = 0.5  # the base model answering half the questions right already needs no help
_CHEAPEST_FIRST = ("base", "rag", "tuned", "hybrid")


@dataclass(frozen=True)
class Recommendation:
    choice: str  # rag, lora, both, base, unclear, none
    headline: str  # one sentence: what to use
    reasons: list[str] = field(default_factory=list)  # the numbers behind it
    cautions: list[str] = field(default_factory=list)  # how sure it is, what to check


def _count(marks: Sequence[bool]) -> int:
    return sum(bool(m) for m in marks)


@dataclass
class _Scores:
    """Right answers per mode on the same `n` questions, and the tests between modes."""

    correct: Mapping[str, Sequence[bool]]
    modes: list[str]
    seed: int

    @property
    def n(self) -> int:
        return len(self.correct[self.modes[0]])

    @property
    def right(self) -> dict[str, int]:
        return {m: _count(self.correct[m]) for m in self.modes}

    def beats(self, a: str, b: str) -> bool:
        """Whether `a` is right more often than `b`, beyond what chance explains."""
        if a not in self.right or b not in self.right or self.n < MIN_TO_DECIDE:
            return False
        marks_a = [float(x) for x in self.correct[a]]
        marks_b = [float(x) for x in self.correct[b]]
        return paired_difference(marks_a, marks_b, self.seed).low > 0

    def said(self, mode: str) -> str:
        return f"{_name(mode)} answered {self.right[mode]} of {self.n} correctly"


def _cautions(scores: _Scores, hit_rate: float | None) -> list[str]:
    n, found = scores.n, []
    if n < FEW_QUESTIONS:
        found.append(
            f"Only {n} question{'s' if n != 1 else ''}: each one moves a score by "
            f"{100 / n:.0f} points, so treat this as a first look. {FEW_QUESTIONS} or more "
            "give a firmer answer."
        )
    if hit_rate is not None and "rag" in scores.right and hit_rate < 0.5:
        found.append(
            f"The retrieved passages held the answer for only {hit_rate:.0%} of the questions: "
            "RAG can do better when retrieval finds more (more passages per question, smaller "
            "passages, or documents that state the answers)."
        )
    return found


def _clear_winner(scores: _Scores) -> tuple[str, str] | None:
    """(choice, headline) when one option is clearly best; None when none is."""
    right, n, beats, said = scores.right, scores.n, scores.beats, scores.said
    others = [m for m in scores.modes if m != "base"]
    if (
        "base" in right
        and right["base"] / n >= GOOD_ENOUGH
        and not any(beats(m, "base") for m in others)
    ):
        return "base", _sentence(
            f"{said('base')} and nothing did clearly better: for these questions you may need "
            "neither RAG nor fine-tuning."
        )
    if beats("hybrid", "rag") and beats("hybrid", "tuned"):
        return "both", (
            f"{said('hybrid')}, {_name('rag')} {right['rag']} and {_name('tuned')} "
            f"{right['tuned']}: the adapter and the documents help each other here, so use "
            "both."
        )
    if beats("rag", "base") and ("tuned" not in right or beats("rag", "tuned")):
        rival = "tuned" if "tuned" in right else "base"
        return "rag", (
            f"{said('rag')}, {_name(rival)} {right[rival]} of {n}: your questions ask for facts "
            "in your documents, so use RAG. It also follows your documents when they change, "
            "without training again."
        )
    if beats("tuned", "base") and ("rag" not in right or beats("tuned", "rag")):
        rival = "rag" if "rag" in right else "base"
        return "lora", _sentence(
            f"{said('tuned')}, {_name(rival)} {right[rival]} of {n}: what your questions need "
            "is what the adapter learned from your training data (its knowledge, wording or "
            "format), so use the fine-tuned model."
        )
    return None


def _no_clear_winner(scores: _Scores) -> str:
    right, n = scores.right, scores.n
    leader, runner = sorted(scores.modes, key=lambda m: (-right[m], _CHEAPEST_FIRST.index(m)))[:2]
    more = (
        f" Add questions to decide: a winner needs at least {MIN_TO_DECIDE}."
        if n < MIN_TO_DECIDE
        else ""
    )
    if right[leader] == right[runner]:
        return _sentence(
            f"No clear winner: {scores.said(leader)}, and so did {_name(runner)}. With equal "
            f"scores, the simpler one will do: {_name(leader)}.{more}"
        )
    return _sentence(
        f"No clear winner: {scores.said(leader)} and {_name(runner)} {right[runner]} of {n}, a "
        f"difference that chance could explain with {n} question{'s' if n != 1 else ''}. "
        f"Add questions to decide; until then {_name(leader)} is the better bet."
    )


def recommend(
    correct: Mapping[str, Sequence[bool]],
    hit_rate: float | None = None,
    seed: int = 0,
) -> Recommendation:
    """The recommendation for per-mode right/wrong marks on the same questions."""
    modes = [m for m in _CHEAPEST_FIRST if m in correct]
    if not modes or not correct[modes[0]]:
        return Recommendation("none", "There are no answers to compare yet.")
    scores = _Scores(correct, modes, seed)
    right = scores.right
    reasons = [_sentence(f"{scores.said(m)}.") for m in sorted(modes, key=lambda m: -right[m])]
    best = max(modes, key=lambda m: (right[m], -_CHEAPEST_FIRST.index(m)))
    if right[best] == 0:  # retrieval is not the question yet: nothing was right at all
        return Recommendation(
            "none",
            "None of the modes answered any question correctly, so there is nothing to choose "
            "yet. Check the reference answers (are they short and written as the documents "
            "say them?) and that your documents contain the answers.",
            reasons,
            _cautions(scores, None),
        )
    cautions = _cautions(scores, hit_rate)
    winner = _clear_winner(scores)
    if winner is not None:
        return Recommendation(winner[0], winner[1], reasons, cautions)
    return Recommendation("unclear", _no_clear_winner(scores), reasons, cautions)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _name(mode: str) -> str:
    return {"base": "the base model", "tuned": "the tuned model"}.get(mode, MODES[mode].label)


def costs(
    info: Mapping[str, Any], answer_seconds: Mapping[str, float], batch_note: str = ""
) -> list[str]:
    """What each option costs, in plain words, from the report's cost snapshot."""
    lines = []
    if info.get("training_s"):
        lines.append(
            f"Fine-tuning: training took {short_duration(float(info['training_s']))}; the "
            f"adapter is {_size(int(info.get('adapter_bytes', 0)))} and must be trained again "
            "when the facts change."
        )
    if info.get("kb_passages") is not None:
        lines.append(
            f"RAG: the knowledge base holds {plural(int(info['kb_passages']), 'passage')} from "
            f"{plural(int(info.get('kb_documents', 0)), 'document')} "
            f"({_size(int(info.get('kb_bytes', 0)))}); "
            "an edited document counts at once."
        )
    if answer_seconds:
        times = ", ".join(f"{MODES[m].label} {s:.1f} s" for m, s in answer_seconds.items())
        lines.append(f"Time per answer (median{batch_note}): {times}.")
    return lines


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.0f} KB"
