"""The Evaluate page through app.py, with a fake chat model and fake embeddings."""

import json
import re
import time

import pytest

from core.answering.modes import is_reading
from core.evaluation import runner
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.settings import load_settings
from tests.support.training import trained
from tests.views.conftest import texts

PAGE = "views/evaluate.py"
QUESTIONS = [
    {"question": "What is the refund period?", "reference": "45 days"},
    {"question": "What is the release code?", "reference": "BLUE-HARBOR-42", "accepted": ["BH42"]},
    {"question": "What is the capital of France?", "answer": "Paris"},
]


def jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


@pytest.fixture
def studio(fake_model, fake_search):
    """A knowledge base with the answers; the fake model answers right only when it reads
    passages (and knows Paris)."""
    settings = load_settings()
    kb = KnowledgeStore(settings, fake_search).create("Policies")
    text = b"Refunds are possible within 45 days.\n\nThe release code is BLUE-HARBOR-42."
    list(ingest(kb, [UploadedFile("policy.txt", text)], ChunkSettings(200, 20)))

    def reply(request) -> str:
        content = request.messages[-1]["content"]
        if is_reading(content):
            if "refund" in content.split("Question:")[-1]:
                return "Refunds: 45 days [1]."
            return "The code is BLUE-HARBOR-42 [2]."
        return "Paris." if "France" in content else "I am not sure."

    fake_model.replies = [reply]
    return settings


def upload(at, name: str, data: bytes):
    at.file_uploader[0].set_value([(name, data, "application/octet-stream")]).run()
    assert not at.exception
    return at


def wait_until_done(at, settings, timeout: float = 30):
    report_id = at.session_state["eval_report_id"]
    deadline = time.monotonic() + timeout
    while runner.is_running(report_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    at.run()
    assert not at.exception
    return runner.load(settings, report_id)


def test_with_nothing_to_compare_the_page_says_what_to_do_first(open_page, fake_search):
    at = open_page(PAGE)
    assert not at.exception
    shown = texts(at.info)
    assert "Train an adapter or create a knowledge base first" in shown
    assert "No adapter yet" in shown and "No knowledge base yet" in shown
    assert "eval_run" not in [b.key for b in at.button]


def test_upload_questions_run_and_read_the_report(open_page, studio, fake_model):
    settings = studio
    at = upload(open_page(PAGE), "questions.jsonl", jsonl(QUESTIONS) + b"\n{broken")
    assert "3 questions from the file questions.jsonl" in texts(at.caption)
    assert "Skipped: Line 4: not valid JSON" in texts(at.warning)
    assert at.button(key="eval_run").label == "Evaluate 3 questions in 2 modes"
    at.button(key="eval_run").click().run()
    assert not at.exception
    report = wait_until_done(at, settings)
    assert report.state == "completed" and report.done == 3
    assert len(fake_model.requests) == 6  # two modes per question
    assert all(r.adapter is None for r in fake_model.requests)
    headline = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert headline and "No clear winner: RAG answered 2 of 3 correctly" in headline[0]
    assert "Only 3 questions" in texts(at.warning)
    assert "RAG: the knowledge base holds" in texts(at.markdown)
    assert len(at.get("vega_lite_chart")) == 2
    frames = at.dataframe
    assert len(frames) == 2  # scores per mode, and every question
    questions = frames[1].value
    assert list(questions["Base model"]) == [
        "✗ did not know it",
        "✗ did not know it",
        "✓ already knew it",
    ]
    assert list(questions["RAG"])[:2] == ["✓", "✓"]
    assert len(at.get("download_button")) == 2
    # the answers to one question, side by side with marks and reasons
    assert "**RAG**" in [m.value for m in at.markdown]
    assert "The base model did not know it." in texts(at.caption)


def test_a_saved_report_opens_again_and_can_be_deleted(open_page, studio):
    settings = studio
    at = upload(open_page(PAGE), "questions.jsonl", jsonl(QUESTIONS))
    at.text_input(key="eval_name").set_value("Policies check").run()
    at.button(key="eval_run").click().run()
    report = wait_until_done(at, settings)
    at.button(key="eval_new").click().run()
    assert at.session_state["eval_report_id"] is None
    assert any("Policies check" in m.value for m in at.markdown)
    at.button(key=f"eval_open_{report.id}").click().run()
    assert at.subheader[0].value == "Policies check"
    at.button(key=f"eval_delete_{report.id}").click().run()
    assert not at.exception
    assert runner.list_reports(settings) == []
    assert at.session_state["eval_report_id"] is None


def test_generated_questions_can_be_edited_before_the_run(open_page, studio, fake_model):
    fake_model.replies = [lambda request: "What is the code?"]
    at = open_page(PAGE)
    at.session_state["eval_source_choice"] = "generate"
    at.run()
    at.button(key="eval_generate").click().run()
    assert not at.exception
    rows = at.session_state["eval_items"]
    assert {"question": "What is the code?", "reference": "BLUE-HARBOR-42", "accepted": ""} in rows
    assert "generated from Policies" in texts(at.caption)


def test_held_out_questions_and_the_training_overlap_warning(open_page, studio):
    settings = studio
    run_id = trained(settings, "Facts")
    at = open_page(PAGE)
    at.session_state["eval_source_choice"] = "held_out"
    at.run()
    at.button(key="eval_held_out").click().run()
    assert not at.exception
    assert at.session_state["eval_items"], "the held-out examples were loaded"
    assert at.button(key="eval_run").label.endswith("in 4 modes")
    # a question the adapter was trained on
    from core.training import run_folder
    from core.training.config import split

    folder = settings.data_dir / "runs" / run_id
    examples, spec = run_folder.read_dataset(folder), run_folder.RunSpec.load(folder)
    trained_rows, _ = split(len(examples), spec.config.eval_fraction, spec.config.seed)
    question = examples[trained_rows[0]][0]["content"]
    at.session_state["eval_source_choice"] = "upload"
    at.run()
    upload(at, "mine.jsonl", jsonl([{"question": question, "answer": "Paris"}]))
    assert "1 of these questions is in the adapter's training data" in texts(at.warning)


def test_a_bad_file_gives_a_message_and_keeps_the_page(open_page, studio):
    at = upload(open_page(PAGE), "questions.csv", b"text,label\nhello,world\n")
    assert "The CSV needs the columns 'question' and 'reference'" in texts(at.error)
    assert at.session_state["eval_items"] == []


def test_a_run_shows_progress_can_be_cancelled_and_resumed(open_page, studio, fake_model):
    settings = studio
    answer = fake_model.replies[0]

    def slow(request):
        time.sleep(0.15)
        return answer(request)

    fake_model.replies = [slow]
    at = upload(open_page(PAGE), "questions.jsonl", jsonl(QUESTIONS * 4))
    at.button(key="eval_run").click().run()
    assert not at.exception
    progress = at.get("progress")
    text = progress[0].proto.text if progress else ""
    assert text == "Answering the first questions in all 2 modes…" or re.match(
        r"^\d+ of 12 questions answered( · about .+ left)?$", text
    ), text
    at.button(key="eval_cancel").click().run()
    report = wait_until_done(at, settings)
    assert report.state == "cancelled" and report.done < 12
    assert "Cancelled" in texts(at.caption)
    left = 12 - report.done
    assert at.button(key="eval_resume").label == f"Resume ({left} questions left)"
    at.button(key="eval_resume").click().run()
    report = wait_until_done(at, settings)
    assert report.state == "completed" and report.done == 12
    assert "eval_resume" not in [b.key for b in at.button]


def test_the_freshness_check_offers_questions_rag_got_right_or_says_none_qualifies(
    open_page, studio, fake_model
):
    settings = studio
    at = upload(open_page(PAGE), "questions.jsonl", jsonl(QUESTIONS))
    at.button(key="eval_run").click().run()
    report = wait_until_done(at, settings)
    offered = at.selectbox(key=f"eval_fresh_q_{report.id}")
    assert offered.options == [
        "1. What is the refund period?",
        "2. What is the release code?",
    ]  # Paris: RAG was right, but no passage states it
    fake_model.replies = [lambda request: "I am not sure."]  # RAG now gets nothing right
    at.button(key="eval_new").click().run()
    at = upload(at, "questions.jsonl", jsonl(QUESTIONS))
    at.button(key="eval_run").click().run()
    wait_until_done(at, settings)
    assert "No question qualifies yet" in texts(at.info)
    assert "eval_fresh_run" not in [b.key for b in at.button]
