"""Evaluations: four modes per question, reasons for misses, saving, cancel and resume, the
freshness check and the exported report."""

import html
import re
import time

import pytest

from core import evaluate, freshness, report
from core.arena import RAG_INSTRUCTIONS
from core.errors import InvalidInputError
from core.evalset import EvalItem
from core.generate import ChatRequest, SamplingParams
from core.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge import client_for
from core.retrieve import search
from tests.fakes import FakeChatModel
from tests.training import trained

DOCUMENT = (
    b"The release code is BLUE-HARBOR-42.\n\nRefunds are possible within 45 days of the booking."
)
ITEMS = [
    EvalItem("What is the release code?", "BLUE-HARBOR-42"),
    EvalItem("How long is the refund period?", "45 days"),
    EvalItem("What is the capital of France?", "Paris"),
    EvalItem("Who is the harbour master?", "Ingrid Solberg"),
]
PARAMS = SamplingParams(temperature=0.0, max_new_tokens=32)


def oracle(request: ChatRequest) -> str:
    """A model that knows Paris, reads codes (not periods) from passages, and, with the
    adapter, has learned the harbour master but forgotten Paris."""
    content = request.messages[-1]["content"]
    if content.startswith(RAG_INSTRUCTIONS):
        code = re.search(r"code is ([A-Z]+-[A-Z]+-\d+)", content)
        if code:
            return f"The release code is {code.group(1)} [1]."
    if request.adapter is not None:
        return "The harbour master is Ingrid Solberg." if "master" in content else "No idea."
    return "Paris." if "France" in content else "I do not know."


@pytest.fixture
def kb(knowledge):
    base = knowledge.create("Harbour")
    list(ingest(base, [UploadedFile("handbook.txt", DOCUMENT)], ChunkSettings(200, 20)))
    return base


def new(settings, kb, adapter=None, items=ITEMS) -> evaluate.Report:
    return evaluate.new_report(
        settings, FakeChatModel([oracle]), items, adapter=adapter, kb=kb, params=PARAMS
    )


def test_every_question_in_every_mode_with_a_reason_for_each_miss(settings, kb) -> None:
    fake = FakeChatModel([oracle])
    run_id = trained(settings, "Harbour staff")
    from core import adapters

    shown = evaluate.new_report(
        settings, fake, ITEMS, adapter=adapters.get(settings, run_id), kb=kb, params=PARAMS
    )
    assert shown.modes == ["base", "tuned", "rag", "hybrid"]
    evaluate.run(settings, fake, shown, kb, batch=3)
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
    summaries = evaluate.summarise(shown)
    assert summaries["rag"].correct == 1 and summaries["tuned"].correct == 1
    assert summaries["rag"].hit_rate.mean == 0.5 and summaries["base"].hit_rate is None
    again = evaluate.load(settings, shown.id)
    assert again.results[0].answers["rag"].text == code.answers["rag"].text
    assert evaluate.correctness(again) == evaluate.correctness(shown)


def test_without_adapter_or_knowledge_base_only_the_possible_modes_run(settings, kb) -> None:
    assert new(settings, kb).modes == ["base", "rag"]
    assert new(settings, None).modes == ["base"]
    with pytest.raises(InvalidInputError, match="at least one question"):
        new(settings, kb, items=[])


def test_a_background_run_can_be_cancelled_and_resumed(settings, kb, monkeypatch) -> None:
    shown = new(settings, kb, items=ITEMS * 5)
    slow = FakeChatModel([oracle])
    real = slow.stream_many

    def slowly(requests, params, seed=None):
        time.sleep(0.05)
        return real(requests, params, seed)

    monkeypatch.setattr(slow, "stream_many", slowly)
    evaluate.start(settings, slow, shown, kb, batch=1)
    with pytest.raises(InvalidInputError, match="Another evaluation is running"):
        evaluate.start(settings, slow, new(settings, kb), kb)
    while evaluate.running_report(shown.id) is not None and shown.done < 3:
        time.sleep(0.01)
    evaluate.cancel(shown.id)
    deadline = time.monotonic() + 10
    while evaluate.is_running(shown.id) and time.monotonic() < deadline:
        time.sleep(0.01)
    saved = evaluate.load(settings, shown.id)
    assert saved.state == "cancelled" and 3 <= saved.done < 20
    assert evaluate.status(saved) == "cancelled"
    evaluate.run(settings, FakeChatModel([oracle]), saved, kb)
    assert saved.state == "completed" and saved.done == 20
    assert [r.question for r in saved.results] == [i.question for i in ITEMS * 5]


def test_a_run_the_app_lost_is_interrupted_and_a_failure_keeps_the_answers(settings, kb) -> None:
    shown = new(settings, kb)
    evaluate.save(settings, shown)  # "running" on disk, but no thread runs it here
    assert evaluate.status(evaluate.load(settings, shown.id)) == "interrupted"

    def broken(request: ChatRequest) -> str:
        if "France" in request.messages[-1]["content"]:
            raise RuntimeError("boom")
        return "I do not know."

    evaluate.run(settings, FakeChatModel([broken]), shown, kb, batch=2)
    assert shown.state == "failed" and shown.done == 2
    assert "answers so far are kept" in shown.error and "boom" not in shown.error
    assert [r.id for r in evaluate.list_reports(settings)] == [shown.id]
    evaluate.delete(settings, shown.id)
    assert evaluate.list_reports(settings) == []
    with pytest.raises(InvalidInputError):
        evaluate.load(settings, "../etc")


def test_freshness_rag_follows_an_edited_fact_the_adapter_does_not(settings, kb, knowledge) -> None:
    from core import adapters

    run_id = trained(settings, "Harbour staff")

    def learned(request: ChatRequest) -> str:
        if request.adapter is not None and not request.messages[-1]["content"].startswith(
            RAG_INSTRUCTIONS
        ):
            return "The release code is BLUE-HARBOR-42."  # learned in training
        return oracle(request)

    fake = FakeChatModel([learned])
    shown = evaluate.new_report(
        settings, fake, ITEMS[:1], adapter=adapters.get(settings, run_id), kb=kb, params=PARAMS
    )
    evaluate.run(settings, fake, shown, kb)
    assert freshness.suggest("BLUE-HARBOR-42") == "BLUE-HARBOR-43"
    assert freshness.suggest("45 days") == "46 days" and freshness.suggest("Paris") == ""
    found = freshness.check(settings, fake, kb, shown, 0, "BLUE-HARBOR-43")
    assert found.edited == ["handbook.txt"]
    assert found.follows == {"base": "neither", "tuned": "old", "rag": "new", "hybrid": "new"}
    assert found.summary[1].startswith("Fine-tuned (LoRA) still answers 'BLUE-HARBOR-42'")
    assert found.summary[2] == "RAG now answers 'BLUE-HARBOR-43': it follows the change."
    # the user's knowledge base is as it was, and the scratch copy is gone
    assert "BLUE-HARBOR-42" in search(kb, "release code", 4).passages[0].text
    collections = [c.name for c in client_for(settings).list_collections()]
    assert not [c for c in collections if c.startswith("fresh-")]
    assert not list((evaluate.reports_dir(settings) / "scratch").iterdir())
    assert evaluate.load(settings, shown.id).freshness["follows"]["rag"] == "new"
    with pytest.raises(InvalidInputError, match="must differ"):
        freshness.check(settings, fake, kb, shown, 0, "blue-harbor-42")


def test_freshness_needs_the_old_answer_in_the_documents(settings, kb) -> None:
    shown = new(settings, kb, items=[ITEMS[3]])
    evaluate.run(settings, FakeChatModel([oracle]), shown, kb)
    with pytest.raises(InvalidInputError, match="No passage of 'Harbour' states 'Ingrid Solberg'"):
        freshness.check(settings, FakeChatModel([oracle]), kb, shown, 0, "Tom Berg")
    with pytest.raises(InvalidInputError, match="Type the new answer"):
        freshness.check(settings, FakeChatModel([oracle]), kb, shown, 0, "  ")


def test_exports_carry_the_verdict_charts_and_table_and_escape_model_text(settings, kb) -> None:
    def hostile(request: ChatRequest) -> str:
        return "<script>alert(1)</script> | BLUE-HARBOR-42"

    shown = new(settings, kb, items=ITEMS[:2])
    evaluate.run(settings, FakeChatModel([hostile]), shown, kb)
    page = report.to_html(shown)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<svg") == 2  # correctness and latency, drawn inline
    verdict = report.verdict(shown).recommendation
    assert verdict.choice == "base"  # the hostile model names the code in every mode
    assert html.escape(verdict.headline) in page and "Only 2 questions" in page
    assert "✓" in page and "✗ retrieved but not used" in page
    text = report.to_markdown(shown)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "\\| BLUE-HARBOR-42" in text  # a pipe in an answer does not break the table
    assert text.count("data:image/svg+xml;base64,") == 2
    assert "| # | Question | Reference | Base model | RAG |" in text
    rows = report.score_rows(evaluate.summarise(shown))
    assert [r["Mode"] for r in rows] == ["Base model", "RAG"]
    assert rows[1]["Right"] == "1 of 2" and rows[1]["Answer retrieved (%)"] == 100
