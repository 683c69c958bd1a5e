"""Scoring one question in every mode, with a plain reason for each miss, and the summaries."""

import pytest

from core.answering.conversations import ModeAnswer
from core.evaluation.questions import EvalItem
from core.evaluation.results import Report, correctness, judge, summarise

ITEM = EvalItem("What is the release code?", "BLUE-HARBOR-42", ["blue harbor 42"])
FOUND = [{"text": "The release code is BLUE-HARBOR-42.", "citation": "handbook.txt"}]
MISSED = [{"text": "Refunds within 45 days.", "citation": "handbook.txt"}]


def answers(**texts: str) -> dict[str, ModeAnswer]:
    return {mode: ModeAnswer(text=text, total_s=1.0, new_tokens=4) for mode, text in texts.items()}


def test_each_miss_gets_the_reason_that_fits_it() -> None:
    result = judge(
        ITEM,
        answers(base="The code is BLUE-HARBOR-42.", tuned="No idea.", rag="I cannot tell."),
        FOUND,
    )
    assert result.correct("base") and not result.correct("rag")
    assert result.retrieval_hit is True
    assert result.reasons == {"base": "base_knew", "tuned": "forgotten", "rag": "not_used"}


def test_without_the_answer_in_the_passages_a_rag_miss_is_retrieval() -> None:
    result = judge(ITEM, answers(base="No.", tuned="No.", rag="No."), MISSED)
    assert result.retrieval_hit is False
    assert result.reasons == {"base": "base_missed", "tuned": "not_learned", "rag": "not_retrieved"}


def test_an_accepted_answer_counts_and_an_error_never_does() -> None:
    errors = {"rag": ModeAnswer(text="BLUE-HARBOR-42", error="The model stopped.")}
    result = judge(ITEM, answers(base="It is blue harbor 42.") | errors, None)
    assert result.correct("base") and not result.correct("rag")
    assert result.retrieval_hit is None  # no knowledge base


def test_summaries_count_right_answers_per_mode() -> None:
    report = Report(modes=["base", "rag"], items=[ITEM, ITEM])
    report.results = [
        judge(ITEM, answers(base="No.", rag="BLUE-HARBOR-42"), FOUND),
        judge(ITEM, answers(base="BLUE-HARBOR-42", rag="BLUE-HARBOR-42"), FOUND),
    ]
    assert correctness(report) == {"base": [False, True], "rag": [True, True]}
    summaries = summarise(report)
    assert summaries["rag"].correct == 2 and summaries["base"].correct == 1
    assert summaries["rag"].accuracy.mean == pytest.approx(1.0)
    assert summaries["rag"].hit_rate is not None and summaries["base"].hit_rate is None
