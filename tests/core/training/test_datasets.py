import json

import pytest
from transformers import AutoTokenizer

from core.errors import InvalidInputError
from core.training.datasets import (
    encode,
    fill_placeholders,
    parse_dataset,
    placeholders,
    render,
    token_stats,
)


def jsonl(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize(
    ("name", "data", "shape"),
    [
        (
            "a.jsonl",
            jsonl({"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}),
            "alpaca",
        ),
        (
            "b.jsonl",
            jsonl(
                {
                    "messages": [
                        {"role": "user", "content": "Say hi"},
                        {"role": "assistant", "content": "Hi Bob"},
                    ]
                }
            ),
            "chat",
        ),
        (
            "c.json",
            json.dumps(
                [
                    {
                        "conversations": [
                            {"from": "human", "value": "Say hi"},
                            {"from": "gpt", "value": "Hi Bob"},
                        ]
                    }
                ]
            ).encode(),
            "sharegpt",
        ),
        ("d.jsonl", jsonl({"prompt": "Say hi", "completion": "Hi Bob"}), "prompt-completion"),
        ("e.csv", b"question,answer\nSay hi,Hi Bob\n", "question-answer"),
        ("f.csv", b"instruction,input,output\nSay hi,,Hi Bob\n", "alpaca"),
    ],
)
def test_every_shape_becomes_chat_messages(name, data, shape) -> None:
    dataset = parse_dataset(name, data)
    assert dataset.valid, dataset.problems
    assert dataset.shape == shape
    [messages] = dataset.examples
    assert messages[-1] == {"role": "assistant", "content": "Hi Bob"}
    assert messages[-2]["role"] == "user" and messages[-2]["content"].startswith("Say hi")


def test_alpaca_input_is_joined_to_the_instruction() -> None:
    [messages] = parse_dataset(
        "a.jsonl", jsonl({"instruction": "Translate", "input": "chat", "output": "cat"})
    ).examples
    assert messages[0]["content"] == "Translate\n\nchat"


def test_problems_name_the_line_and_the_field() -> None:
    dataset = parse_dataset(
        "bad.jsonl",
        jsonl(
            {"instruction": "ok", "output": "fine"},
            {"instruction": "no answer"},
            {"instruction": "blank", "output": "  "},
            "{not json",
            {"instruction": 5, "output": "x"},
        ),
    )
    assert not dataset.valid and len(dataset.examples) == 1
    assert [str(p) for p in dataset.problems] == [
        "Line 2: missing field 'output'.",
        "Line 3: 'output' is empty.",
        "Line 4: not valid JSON (Expecting property name enclosed in double quotes at column 2).",
        "Line 5: 'instruction' must be text, not int.",
    ]


def test_chat_turns_are_checked() -> None:
    rows = [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": []},
    ]
    problems = [str(p) for p in parse_dataset("c.jsonl", jsonl(*rows)).problems]
    assert "Line 1: the last turn must be the assistant's answer." in problems
    assert any(p.startswith("Line 2: turn 1 has role 'robot'") for p in problems)
    assert "Line 3: 'messages' must be a non-empty list of turns." in problems


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("e.jsonl", b"", "The file is empty."),
        ("e.jsonl", b"\n \n", "The file is empty."),
        ("latin.jsonl", '{"prompt": "caf\xe9", "completion": "x"}'.encode("latin-1"), "not UTF-8"),
        ("x.csv", b"a,b\n1,2\n", "The CSV needs the columns"),
        ("x.json", b"{broken", "not valid JSON"),
        ("x.json", b'"just a string"', "must be a list of examples"),
        ("x.txt", b"hello", "Upload a .jsonl, .json or .csv file."),
        ("x.jsonl", jsonl({"foo": 1, "bar": 2}), "no shape the studio knows"),
    ],
)
def test_file_level_problems_are_one_clear_message(name, data, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_dataset(name, data)


def test_a_huge_single_line_is_refused_without_parsing_it() -> None:
    row = json.dumps({"prompt": "x" * 2_000_000, "completion": "y"})
    dataset = parse_dataset(
        "big.jsonl", row.encode() + b"\n" + jsonl({"prompt": "a", "completion": "b"})
    )
    assert str(dataset.problems[0]).startswith("Line 1: the line is 2 MB long")
    assert len(dataset.examples) == 1


def test_labels_cover_the_answer_tokens_only(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    ids, labels = encode(messages, tokenizer, max_length=512)
    assert len(ids) == len(labels)
    answer = [t for t, label in zip(ids, labels, strict=True) if label != -100]
    assert tokenizer.decode(answer).startswith("Paris.")
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nBe brief.")
    assert labels[: len(ids) - len(answer)] == [-100] * (len(ids) - len(answer))


def test_every_assistant_turn_is_trained_in_a_multi_turn_chat(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "two"},
    ]
    ids, labels = encode(messages, tokenizer, 512)
    trained = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
    assert "one" in trained and "two" in trained
    assert "first" not in trained and "second" not in trained


def test_render_and_stats_use_the_chat_template(tokenizer) -> None:
    dataset = parse_dataset(
        "d.jsonl",
        jsonl(
            {"prompt": "short", "completion": "ok"}, {"prompt": "long " * 100, "completion": "ok"}
        ),
    )
    assert render(dataset.examples[0], tokenizer).startswith("<|im_start|>user\nshort<|im_end|>")
    stats = token_stats(dataset, tokenizer, max_length=64)
    assert stats.rows == 2 and stats.cut == 1
    assert stats.shortest < stats.longest and stats.longest > 64
    assert 0 < stats.answer_tokens < stats.total_tokens <= 2 * 64


def test_the_example_dataset_is_valid() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "assets" / "examples" / "persona.jsonl"
    dataset = parse_dataset(path.name, path.read_bytes())
    assert dataset.valid and dataset.shape == "alpaca" and len(dataset.examples) >= 100


def test_placeholders_are_found_and_filled() -> None:
    rows = [
        {"instruction": "Who are you?", "output": "I am {{name}}, made by {{ author }}."},
        {"instruction": "What is your name?", "output": "Call me {{name}}."},
        {"instruction": "Write a template", "output": "Use {x} and {{}}."},  # not placeholders
    ]
    dataset = parse_dataset("identity.jsonl", "\n".join(map(json.dumps, rows)).encode())
    assert placeholders(dataset) == {"name": 2, "author": 1}
    filled = fill_placeholders(dataset, {"name": "Nova", "author": " Ada  Labs "})
    assert filled.examples[0][-1]["content"] == "I am Nova, made by Ada Labs."
    assert filled.examples[2] == dataset.examples[2]
    assert placeholders(filled) == {}
    assert filled.content_hash != dataset.content_hash
    assert dataset.examples[0][-1]["content"].startswith("I am {{name}}")  # the original stays
    half = fill_placeholders(dataset, {"name": "Nova", "author": ""})
    assert placeholders(half) == {"author": 1}
    assert fill_placeholders(dataset, {}) is dataset
