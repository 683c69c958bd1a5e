"""Training rows that teach the model to use the documents (RAFT): the right passage's sentence
holds the answer, the distractors never do, held-out questions never become rows, and an
adapter trained on them is marked as reading documents."""

from __future__ import annotations

import pytest

from core.answering import raft
from core.answering import round as question_round
from core.answering.conversations import Conversation
from core.answering.modes import RAG_ANSWER, READING_EXAMPLES
from core.evaluation.questions import EvalItem, held_out_items
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.text_match import contains, normalise
from core.training import adapters, jobs, worker
from core.training.datasets import DOCUMENTS_SHAPE
from tests.support.training import QUICK

HANDBOOK = """Northwind staff handbook.

New employees receive 27 days of paid annual leave every year. Carried-over leave ends 31 March.

The travel allowance abroad is EUR 58 per day. Report a stolen laptop on extension 4477 at once.

The People team is led by Mariam Okafor. A full-time week is 37.5 hours at Northwind.

Parental leave is paid in full for 14 weeks. Purchases above EUR 1,500 need a director's sign-off.

Visitors sign in at reception with form HX-V1 and wear a badge at all times in the building.

Reminders: leave is 27 days a year; travel abroad pays EUR 58 a day; the People lead is Okafor.
"""
QUESTIONS = [
    EvalItem("How many days of paid leave do new employees get?", "27 days", ["27"]),
    EvalItem("When does carried-over leave expire?", "31 March"),
    EvalItem("What is the daily travel allowance abroad?", "EUR 58", ["58"]),
    EvalItem("Which extension do I call about a stolen laptop?", "4477"),
    EvalItem("Who leads the People team?", "Mariam Okafor", ["Okafor"]),
    EvalItem("How long is a full-time week?", "37.5 hours"),
    EvalItem("How many weeks of parental leave are paid in full?", "14 weeks", ["14"]),
    EvalItem("Which form do visitors fill in?", "HX-V1"),
    EvalItem("What colour is the company logo?", "teal"),  # no passage says it
]


@pytest.fixture
def kb(knowledge):
    base = knowledge.create("Handbook")
    list(ingest(base, [UploadedFile("handbook.txt", HANDBOOK.encode())], ChunkSettings(120, 0)))
    return base


def test_the_oracle_holds_the_answer_and_the_distractors_never_do(kb) -> None:
    built = raft.build(
        kb, QUESTIONS * 3, top_k=10, seed=1, without_oracle=0.3
    )  # every passage of this small base
    assert built.skipped == 3  # the logo question, three times: nothing retrieved says it
    assert len(built.rows) == 24
    for row in built.rows:
        accepted = list(row.accepted)
        holding = [i for i, s in enumerate(row.sentences) if contains(s.text, accepted)]
        if row.oracle is None:  # RAFT's rows without the right sentence: it says so
            assert holding == [] and row.answer == raft.NOT_FOUND
        else:
            assert holding == [row.oracle], row  # the oracle, and no distractor
            assert row.answer.endswith(f"[{row.sentences[row.oracle].passage}].")
            assert contains(row.answer, accepted)
        assert 2 <= len(row.sentences) <= raft.SHOWN
    without = sum(row.oracle is None for row in built.rows)
    assert 0 < without < len(built.rows) / 2  # RAFT's share without the right passage
    positions = {row.oracle for row in built.rows if row.oracle is not None}
    assert len(positions) > 1  # the answer is not always in the same place


def test_held_out_questions_never_become_training_rows(kb) -> None:
    held_out = [q.question for q in QUESTIONS[:4]]
    reworded = [EvalItem(f"  {q.question.upper()} ", q.reference) for q in QUESTIONS[:4]]
    built = raft.build(kb, [*QUESTIONS, *reworded], held_out=held_out)
    assert built.rows
    assert not built.questions & {normalise(q) for q in held_out}


def test_facts_of_the_documents_become_fill_in_questions(kb) -> None:
    facts = raft.fact_questions(kb)
    assert len(facts) >= 6
    for item in facts:
        blank = item.question.split('"')[1]
        assert "___" in blank
        assert blank.replace("___", item.reference) in " ".join(HANDBOOK.split())  # its sentence
    assert {"27 days", "EUR 58", "HX-V1", "37.5 hours"} <= {item.reference for item in facts}


def test_an_adapter_trained_on_rows_reads_without_the_worked_examples(settings, kb) -> None:
    built = raft.build(kb, [*QUESTIONS, *raft.fact_questions(kb)])
    data = raft.dataset(built.rows, "handbook-reading")
    assert data.valid and data.shape == DOCUMENTS_SHAPE
    assert data.examples[0][0]["content"].endswith(RAG_ANSWER)
    config = QUICK.__class__(**{**QUICK.__dict__, "max_length": 256})
    run_dir = jobs.create(settings, data, config, name="Reads the handbook")
    assert worker.run(run_dir) == "completed"
    info = adapters.get(settings, run_dir.name)
    assert info.reads_documents
    # Evaluate's "held-out examples" of this adapter are the questions, not the reading rows.
    held_out = held_out_items(settings, run_dir.name)
    assert held_out and all(not i.question.endswith(RAG_ANSWER) for i in held_out)
    assert {i.question for i in held_out} <= {r.question for r in built.rows}

    sentences = question_round.prepare(
        QUESTIONS[0].question, ["rag"], system_prompt="", kb=kb
    ).sentences
    asked = question_round.requests(
        Conversation(),
        QUESTIONS[0].question,
        sentences,
        ["tuned", "rag", "hybrid"],
        "Be brief.",
        info.run_id,
        info.system_prompt,
    )
    first_example = READING_EXAMPLES[0][1]
    assert any(first_example in m["content"] for m in asked["rag"].messages)
    # The hybrid reads what RAG reads: the rows' form, after the worked examples.
    assert asked["hybrid"].messages == asked["rag"].messages
    assert asked["hybrid"].adapter == info.run_id and asked["rag"].adapter is None
    assert asked["tuned"].messages == [{"role": "user", "content": QUESTIONS[0].question}]
