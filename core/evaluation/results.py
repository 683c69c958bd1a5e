"""An evaluation's results: each question's answers, scores and reasons for misses (`judge`),
the report that holds them, and the per-mode summaries with confidence intervals."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.answering.conversations import ModeAnswer
from core.answering.modes import MODES
from core.evaluation.metrics import Interval, bootstrap_mean, score
from core.evaluation.questions import EvalItem
from core.ids import check_id, new_id
from core.text_match import contains
from core.typed import parse

# key -> (short mark for tables, plain sentence)
REASONS = {
    "not_retrieved": (
        "not retrieved",
        "Not retrieved: the passages found did not contain the answer.",
    ),
    "not_used": (
        "retrieved but not used",
        "Retrieved but not used: the answer was in the passages, the model missed it.",
    ),
    "not_learned": ("not learned", "Not learned by the adapter."),
    "forgotten": ("forgotten", "The adapter lost what the base model knew."),
    "base_knew": ("already knew it", "The base model already knew it."),
    "base_missed": ("did not know it", "The base model did not know it."),
}


@dataclass
class QuestionResult:
    question: str
    reference: str
    accepted: list[str]
    origin: str
    passages: list[dict[str, Any]]
    retrieval_s: float
    retrieval_hit: bool | None  # None when there is no knowledge base
    answers: dict[str, ModeAnswer]
    scores: dict[str, dict[str, Any]]  # mode -> exact, f1, contained, correct
    reasons: dict[str, str]  # mode -> key of REASONS

    def correct(self, mode: str) -> bool:
        return bool(self.scores.get(mode, {}).get("correct"))


@dataclass
class Report:
    id: str = field(default_factory=new_id)
    name: str = ""
    created: float = field(default_factory=time.time)
    model: str = ""
    adapter: str = ""  # run id
    adapter_name: str = ""
    knowledge_base: str = ""
    modes: list[str] = field(default_factory=list)
    source: str = ""  # where the questions came from, in words
    params: dict[str, Any] = field(default_factory=dict)
    top_k: int = 4
    system_prompt: str = ""
    items: list[EvalItem] = field(default_factory=list)
    results: list[QuestionResult] = field(default_factory=list)  # in item order, as answered
    seen_in_training: list[int] = field(default_factory=list)  # item indices
    costs: dict[str, Any] = field(default_factory=dict)
    state: str = "running"  # running, completed, cancelled, failed (interrupted: see `status`)
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    elapsed_s: float = 0.0  # time spent answering, over every resumed run
    freshness: dict[str, Any] | None = None

    @property
    def done(self) -> int:
        return len(self.results)

    @property
    def total(self) -> int:
        return len(self.items)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """A report read from disk or a bundle: every field type-checked, the id safe to become
        a file name."""
        report = parse(cls, data, "A saved evaluation report")
        check_id(report.id, "evaluation report")
        return report


# -- scoring ---------------------------------------------------------------------------------------
def judge(
    item: EvalItem, answers: dict[str, ModeAnswer], passages: Sequence[dict[str, Any]] | None
) -> QuestionResult:
    """Score each mode's answer and give a plain reason for each miss."""
    accepted = item.answers
    hit = None if passages is None else contains(" ".join(p["text"] for p in passages), accepted)
    scores: dict[str, dict[str, Any]] = {}
    for mode, answer in answers.items():
        marks = score(answer.text, accepted) if not answer.error else None
        scores[mode] = {
            "exact": bool(marks and marks.exact),
            "f1": marks.f1 if marks else 0.0,
            "contained": bool(marks and marks.contained),
            "correct": bool(marks and marks.correct),
        }
    base_right = scores.get("base", {}).get("correct")
    reasons: dict[str, str] = {}
    for mode in answers:
        right = scores[mode]["correct"]
        if mode == "base":
            reasons[mode] = "base_knew" if right else "base_missed"
        elif right:
            continue
        elif MODES[mode].uses_passages:
            reasons[mode] = "not_used" if hit else "not_retrieved"
        else:
            reasons[mode] = "forgotten" if base_right else "not_learned"
    return QuestionResult(
        question=item.question,
        reference=item.reference,
        accepted=list(item.accepted),
        origin=item.origin,
        passages=list(passages or []),
        retrieval_s=0.0,
        retrieval_hit=hit,
        answers=answers,
        scores=scores,
        reasons=reasons,
    )


@dataclass(frozen=True)
class ModeSummary:
    mode: str
    questions: int
    correct: int
    accuracy: Interval  # share of questions marked right
    f1: Interval
    exact: float
    contained: float
    hit_rate: Interval | None  # RAG and hybrid: share of questions whose answer was retrieved
    time_to_first_token_s: float  # medians over the questions
    total_s: float
    tokens: float  # mean answer length


def correctness(report: Report) -> dict[str, list[bool]]:
    """Per mode, right or wrong on every answered question (a failed answer counts as wrong)."""
    return {mode: [r.correct(mode) for r in report.results] for mode in report.modes}


def summarise(report: Report, seed: int = 0) -> dict[str, ModeSummary]:
    found = {}
    for mode in report.modes:
        results = [r for r in report.results if mode in r.scores]
        if not results:
            continue
        answers = [r.answers[mode] for r in results if not r.answers[mode].error]
        hits = [float(bool(r.retrieval_hit)) for r in results if r.retrieval_hit is not None]
        found[mode] = ModeSummary(
            mode=mode,
            questions=len(results),
            correct=sum(r.correct(mode) for r in results),
            accuracy=bootstrap_mean([float(r.correct(mode)) for r in results], seed),
            f1=bootstrap_mean([r.scores[mode]["f1"] for r in results], seed),
            exact=statistics.fmean(float(r.scores[mode]["exact"]) for r in results),
            contained=statistics.fmean(float(r.scores[mode]["contained"]) for r in results),
            hit_rate=bootstrap_mean(hits, seed) if MODES[mode].uses_passages and hits else None,
            time_to_first_token_s=_median([a.time_to_first_token_s for a in answers]),
            total_s=_median([a.total_s for a in answers]),
            tokens=statistics.fmean(a.new_tokens for a in answers) if answers else 0.0,
        )
    return found


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
