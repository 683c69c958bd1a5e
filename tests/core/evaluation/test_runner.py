"""Evaluations: four modes per question, reasons for misses, saving, cancel and resume, the
freshness check and the exported report."""

import time

import pytest

from core.errors import InvalidInputError
from core.evaluation import results, runner
from core.model.chat import ChatRequest
from tests.support.evaluation import ITEMS, PARAMS, new, oracle
from tests.support.fakes import FakeChatModel
from tests.support.training import trained


def test_every_question_in_every_mode_with_a_reason_for_each_miss(settings, kb) -> None:
    fake = FakeChatModel([oracle])
    run_id = trained(settings, "Harbour staff")
    from core.training import adapters

    shown = runner.new_report(
        settings, fake, ITEMS, adapter=adapters.get(settings, run_id), kb=kb, params=PARAMS
    )
    assert shown.modes == ["base", "tuned", "rag", "hybrid"]
    runner.run(settings, fake, shown, kb, batch=3)
    assert shown.state == "completed" and shown.done == 4
    assert len(fake.requests) == 16 and fake.adapters  # the adapter was attached
    code, refund, paris, master = shown.results
    assert [code.correct(m) for m in shown.modes] == [False, False, True, True]
    assert code.reasons == {"base": "base_missed", "tuned": "not_learned"}
    assert refund.retrieval_hit is True
    assert refund.reasons["rag"] == refund.reasons["hybrid"] == "not_used"
    assert paris.reasons["base"] == "base_knew" and paris.reasons["tuned"] == "forgotten"
    assert master.retrieval_hit is False and master.reasons["rag"] == "not_retrieved"
    assert master.correct("tuned") and master.reasons["hybrid"] == "not_retrieved"
    assert code.passages and code.passages[0]["citation"] == "handbook.txt"
    assert shown.costs["kb_documents"] == 1 and shown.costs["adapter_bytes"] > 0
    summaries = results.summarise(shown)
    assert summaries["rag"].correct == 1 and summaries["tuned"].correct == 1
    assert summaries["rag"].hit_rate.mean == 0.5 and summaries["base"].hit_rate is None
    again = runner.load(settings, shown.id)
    assert again.results[0].answers["rag"].text == code.answers["rag"].text
    assert results.correctness(again) == results.correctness(shown)


def test_without_adapter_or_knowledge_base_only_the_possible_modes_run(settings, kb) -> None:
    assert new(settings, kb).modes == ["base", "rag"]
    assert new(settings, None).modes == ["base"]
    with pytest.raises(InvalidInputError, match="at least one question"):
        new(settings, kb, items=[])


def test_a_background_run_can_be_cancelled_and_resumed(settings, kb, monkeypatch) -> None:
    shown = new(settings, kb, items=ITEMS * 5)
    slow = FakeChatModel([oracle])
    real = slow.stream_many

    def slowly(requests, params, seed=None, *, background=False):
        time.sleep(0.05)
        return real(requests, params, seed, background=background)

    monkeypatch.setattr(slow, "stream_many", slowly)
    runner.start(settings, slow, shown, kb, batch=1)
    with pytest.raises(InvalidInputError, match="Another evaluation is running"):
        runner.start(settings, slow, new(settings, kb), kb)
    while runner.running_report(shown.id) is not None and shown.done < 3:
        time.sleep(0.01)
    runner.cancel(shown.id)
    deadline = time.monotonic() + 10
    while runner.is_running(shown.id) and time.monotonic() < deadline:
        time.sleep(0.01)
    saved = runner.load(settings, shown.id)
    assert saved.state == "cancelled" and 3 <= saved.done < 20
    assert runner.status(saved) == "cancelled"
    assert slow.background and all(slow.background)  # people's answers go first
    runner.run(settings, FakeChatModel([oracle]), saved, kb)
    assert saved.state == "completed" and saved.done == 20
    assert [r.question for r in saved.results] == [i.question for i in ITEMS * 5]


def test_a_run_the_app_lost_is_interrupted_and_a_failure_keeps_the_answers(settings, kb) -> None:
    shown = new(settings, kb)
    runner.save(settings, shown)  # "running" on disk, but no thread runs it here
    assert runner.status(runner.load(settings, shown.id)) == "interrupted"

    def broken(request: ChatRequest) -> str:
        if "France" in request.messages[-1]["content"]:
            raise RuntimeError("boom")
        return "I do not know."

    runner.run(settings, FakeChatModel([broken]), shown, kb, batch=2)
    assert shown.state == "failed" and shown.done == 2
    assert "answers so far are kept" in shown.error and "boom" not in shown.error
    assert [r.id for r in runner.list_reports(settings)] == [shown.id]
    runner.delete(settings, shown.id)
    assert runner.list_reports(settings) == []
    with pytest.raises(InvalidInputError):
        runner.load(settings, "../etc")
