"""Evaluation sets: files, held-out examples, overlap with training data, generated questions."""

import json

import pytest

from core.errors import InvalidInputError
from core.evaluation import questions
from core.evaluation.questions import EvalItem
from core.knowledge.retrieve import Passage
from core.training.datasets import parse_dataset
from tests.support.fakes import FakeChatModel
from tests.support.training import QUICK


def test_jsonl_with_references_accepted_answers_and_bad_rows() -> None:
    lines = [
        {"question": "What is the release code?", "reference": "BLUE-HARBOR-42"},
        {"question": "How long?", "answer": "45 days", "accepted": ["45", "forty-five days"]},
        {"question": "No answer here"},
        {
            "messages": [
                {"role": "user", "content": "Capital?"},
                {"role": "assistant", "content": "Paris"},
            ]
        },
    ]
    data = "\n".join(json.dumps(line) for line in lines) + "\n{not json"
    found = questions.parse_eval_set("questions.jsonl", data.encode())
    assert [i.question for i in found.items] == [
        "What is the release code?",
        "How long?",
        "Capital?",
    ]
    assert found.items[1].answers == ["45 days", "45", "forty-five days"]
    assert found.items[2].reference == "Paris"
    assert found.items[0].origin == "line 1"
    assert [str(p) for p in found.problems] == [
        "Line 3: no reference answer: give it a 'reference' (or 'answer') field.",
        "Line 5: not valid JSON (Expecting property name enclosed in double quotes at column 2).",
    ]


def test_csv_with_accepted_answers_separated_by_bars() -> None:
    data = (
        b"question,reference,accepted\n"
        b"Who is the harbour master?,Ingrid Solberg,Solberg | Ms Solberg\n"
    )
    (item,) = questions.parse_eval_set("q.csv", data).items
    assert item == EvalItem(
        "Who is the harbour master?", "Ingrid Solberg", ["Solberg", "Ms Solberg"], "line 2"
    )


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("q.csv", b"prompt,text\na,b\n", "The CSV needs the columns 'question' and 'reference'"),
        (
            "q.jsonl",
            b'{"question": "x"}\n',
            "No question could be read from the file. Line 1: no reference",
        ),
        ("q.txt", b"hello", "Upload a .jsonl, .json or .csv file."),
        ("q.jsonl", b"  ", "The file is empty."),
    ],
)
def test_unusable_files_say_what_to_change(name: str, data: bytes, message: str) -> None:
    with pytest.raises(
        InvalidInputError, match="^" + message.replace("(", r"\(").replace(".", r"\.")
    ):
        questions.parse_eval_set(name, data)


def test_too_many_questions_are_refused() -> None:
    rows = "\n".join(json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(501))
    with pytest.raises(InvalidInputError, match="at most 500"):
        questions.parse_eval_set("big.jsonl", rows.encode())


def _run_with(settings, rows: list[dict], eval_fraction: float) -> str:
    from core.training import jobs

    data = parse_dataset("train.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    config = QUICK.__class__(**{**QUICK.__dict__, "eval_fraction": eval_fraction})
    return jobs.create(settings, data, config, name="facts").name


ROWS = [
    {"instruction": f"What is fact number {i}?", "output": f"Fact {i} is {i * 7}."}
    for i in range(10)
]


def test_held_out_questions_are_the_ones_the_trainer_kept_out(settings) -> None:
    from core.training.config import split

    run_id = _run_with(settings, ROWS, 0.3)
    items = questions.held_out_items(settings, run_id)
    _, held_out = split(10, 0.3, QUICK.seed)
    assert [i.question for i in items] == [ROWS[k]["instruction"] for k in held_out]
    assert items[0].reference == ROWS[held_out[0]]["output"]
    assert items[0].origin == f"held-out example {held_out[0] + 1}"
    # none of them was trained on; every other question was
    assert questions.seen_in_training(items, settings, run_id) == []
    trained_rows = [EvalItem(r["instruction"], r["output"]) for r in ROWS]
    assert len(questions.seen_in_training(trained_rows, settings, run_id)) == 10 - len(held_out)


def test_a_run_without_held_out_examples_says_so(settings) -> None:
    run_id = _run_with(settings, ROWS, 0.0)
    with pytest.raises(InvalidInputError, match="without a held-out part"):
        questions.held_out_items(settings, run_id)


def test_overlap_finds_reworded_case_and_questions_inside_longer_prompts(settings) -> None:
    run_id = _run_with(
        settings,
        [
            {
                "instruction": "Please answer: what is the release code for night departures?",
                "output": "X",
            },
            *ROWS,
        ],
        0.0,
    )
    items = [
        EvalItem("What is the RELEASE code for night departures", "X"),
        EvalItem("What is fact number 3?", "21"),
        EvalItem("Something never seen?", "no"),
    ]
    assert questions.seen_in_training(items, settings, run_id) == [0, 1]


@pytest.mark.parametrize(
    ("sentence", "fact"),
    [
        ("The release code for the vault is BLUE-HARBOR-42.", "BLUE-HARBOR-42"),
        ("Refunds are accepted for 45 days after delivery.", "45 days"),
        ("Parcels ship within 3 working days.", "3 working days"),
        ("On Saturdays it opens at 10:00.", "10:00"),
        ("The party takes place on 14 March at the pier.", "14 March"),
        ("Write to support@harbour.example for help.", "support@harbour.example"),
        ("The store manager is Maria Lopez.", "Maria Lopez"),
        ("Nothing specific is said here.", ""),
    ],
)
def test_facts_worth_asking_about(sentence: str, fact: str) -> None:
    assert questions.find_fact(sentence) == fact


def passage(text: str, source: str = "guide.md", page: int = 0) -> Passage:
    return Passage(text, source, page, 0, "d", 0.0, None, ())


def test_questions_are_generated_from_passages_with_answers_copied_from_them() -> None:
    passages = [
        passage("The vault code is BLUE-HARBOR-42. Keep it secret.", "guide.pdf", 2),
        passage("Refunds are possible within 45 days. Ask at the desk.", "policy.md"),
        passage("This passage has no fact at all, only words.", "notes.md"),
    ]

    def writer(request) -> str:
        text = request.messages[-1]["content"]
        if "BLUE-HARBOR-42" in text:
            return "Question: What is the vault code?"
        return "The refund period is 45 days?"  # gives the answer away: dropped

    fake = FakeChatModel([writer])
    items = questions.generate_questions(fake, passages, count=5, seed=0)
    assert items == [EvalItem("What is the vault code?", "BLUE-HARBOR-42", [], "guide.pdf, page 2")]
    # one batch, each request with the worked examples and the sentence holding the fact
    assert len(fake.requests) == 2
    asked = [r.messages[-1]["content"] for r in fake.requests]
    assert "Sentence: The vault code is BLUE-HARBOR-42.\nAnswer: BLUE-HARBOR-42" in asked
    assert fake.requests[0].system_prompt == questions.QUESTION_INSTRUCTIONS
    assert fake.requests[0].messages[1]["role"] == "assistant"  # a worked example
    assert questions.generate_questions(fake, [passages[2]], count=5) == []


def test_facts_are_spread_over_passages_and_repeatable() -> None:
    passages = [
        passage(f"Room {n} opens at 0{n}:30. Desk {n} has code AB-{n}{n}.", f"f{n}.md")
        for n in range(1, 6)
    ]
    first = questions.facts(passages, 5, seed=3)
    assert first == questions.facts(passages, 5, seed=3)
    assert len({f.citation for f in first}) == 5  # one per passage before a second from any
    assert len(questions.facts(passages, 8, seed=3)) == 8
