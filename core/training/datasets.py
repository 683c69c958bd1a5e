"""Fine-tuning datasets: read JSONL, JSON or CSV in the common shapes, and say what is wrong.

Every shape becomes a list of chat messages, so that training and the preview both go through
the base model's own chat template:
- alpaca: `instruction`, optional `input`, `output` (optional `system`);
- chat: `messages` with `role` and `content` (OpenAI style);
- ShareGPT: `conversations` with `from` (human / gpt / system) and `value`;
- prompt/completion, and question/answer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import InvalidInputError

Message = dict[str, str]
MAX_ROW_BYTES = 1_000_000  # one example larger than this is a mistake, not a training example
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "bot": "assistant",
    "model": "assistant",
}
SHAPES = {
    "alpaca": "instruction / input / output",
    "chat": "messages (role, content)",
    "sharegpt": "conversations (from, value)",
    "prompt-completion": "prompt / completion",
    "question-answer": "question / answer",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row, said so that the user can fix it."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"Line {self.line}: {self.message}"


def last_turns(messages: Sequence[Message]) -> tuple[str, str]:
    """An example's last question and last answer ("" where it has none)."""
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    answer = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
    return question, answer


# The shape of training rows built from a knowledge base (core.answering.raft): an adapter trained
# on them reads documents (the pages say so).
DOCUMENTS_SHAPE = "documents"


@dataclass
class Dataset:
    name: str
    shape: str
    examples: list[list[Message]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # source line of each example
    problems: list[Problem] = field(default_factory=list)
    content_hash: str = ""

    @property
    def valid(self) -> bool:
        return not self.problems and bool(self.examples)


def _detect(row: dict[str, Any]) -> str | None:
    if "messages" in row:
        return "chat"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "prompt" in row or "completion" in row:
        return "prompt-completion"
    if "question" in row or "answer" in row:
        return "question-answer"
    return None


def _text(row: dict[str, Any], key: str, problems: list[str], required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            problems.append(f"missing field '{key}'.")
        return ""
    value = row[key]
    if not isinstance(value, str):
        problems.append(f"'{key}' must be text, not {type(value).__name__}.")
        return ""
    if required and not value.strip():
        problems.append(f"'{key}' is empty.")
    return value.strip()


def _pair(row: dict[str, Any], ask: str, reply: str, problems: list[str]) -> list[Message]:
    user = _text(row, ask, problems)
    answer = _text(row, reply, problems)
    messages = []
    system = _text(row, "system", problems, required=False)
    if system:
        messages.append({"role": "system", "content": system})
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def to_messages(row: Any, shape: str) -> tuple[list[Message], list[str]]:
    """One row as chat messages, and what is wrong with it (nothing: an empty list)."""
    problems: list[str] = []
    if not isinstance(row, dict):
        return [], [f"expected an object with fields, found {type(row).__name__}."]
    if shape == "alpaca":
        instruction = _text(row, "instruction", problems)
        extra = _text(row, "input", problems, required=False)
        answer = _text(row, "output", problems)
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        system = _text(row, "system", problems, required=False)
        messages = ([{"role": "system", "content": system}] if system else []) + messages
    elif shape == "prompt-completion":
        messages = _pair(row, "prompt", "completion", problems)
    elif shape == "question-answer":
        messages = _pair(row, "question", "answer", problems)
    else:
        key, role_key, text_key = (
            ("messages", "role", "content")
            if shape == "chat"
            else ("conversations", "from", "value")
        )
        turns = row.get(key)
        if not isinstance(turns, list) or not turns:
            return [], [f"'{key}' must be a non-empty list of turns."]
        messages = []
        for number, turn in enumerate(turns, start=1):
            if not isinstance(turn, dict):
                problems.append(f"turn {number} of '{key}' is not an object.")
                continue
            raw_role = str(turn.get(role_key, "")).strip().lower()
            role = _SHAREGPT_ROLES.get(raw_role) if shape == "sharegpt" else raw_role
            if role not in ("system", "user", "assistant"):
                problems.append(
                    f"turn {number} has {role_key} '{raw_role}'; use "
                    + (
                        "human, gpt or system."
                        if shape == "sharegpt"
                        else "user, assistant or system."
                    )
                )
                continue
            content = turn.get(text_key)
            if not isinstance(content, str) or not content.strip():
                problems.append(f"turn {number} has an empty '{text_key}'.")
                continue
            messages.append({"role": role, "content": content.strip()})
        if messages and messages[-1]["role"] != "assistant":
            problems.append("the last turn must be the assistant's answer.")
        if messages and not any(m["role"] == "user" for m in messages):
            problems.append("there is no user turn.")
    return messages, problems


DATASET_COLUMNS = (("instruction", "output"), ("prompt", "completion"), ("question", "answer"))


def read_rows(
    name: str, text: str, csv_columns: tuple[tuple[str, ...], ...] = DATASET_COLUMNS
) -> list[tuple[int, Any]]:
    """(line number, parsed row) pairs of a JSONL, JSON or CSV file; a CSV needs one of the
    `csv_columns` sets. File-level problems raise InvalidInputError."""
    kind = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if kind == "jsonl":
        rows: list[tuple[int, Any]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if len(line) > MAX_ROW_BYTES:
                rows.append(
                    (
                        number,
                        ValueError(
                            f"the line is {len(line) / 1e6:.0f} MB long; "
                            f"one example may be at most 1 MB."
                        ),
                    )
                )
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                rows.append(
                    (number, ValueError(f"not valid JSON ({error.msg} at column {error.colno})."))
                )
        return rows
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidInputError(
                f"The file is not valid JSON: {error.msg} at line {error.lineno}, column "
                f"{error.colno}. A JSON dataset is one list of examples, [{{...}}, {{...}}]."
            ) from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise InvalidInputError("A JSON dataset must be a list of examples, [{...}, {...}].")
        return [(number, row) for number, row in enumerate(data, start=1)]
    if kind == "csv":
        try:
            reader = csv.DictReader(io.StringIO(text))
            header = [h.strip() for h in reader.fieldnames or []]
            rows = [
                (number, {k.strip(): v for k, v in row.items() if k})
                for number, row in enumerate(reader, start=2)
            ]
        except csv.Error as error:
            raise InvalidInputError(f"The CSV file could not be read: {error}.") from None
        if not any(set(columns) <= set(header) for columns in csv_columns):
            have = ", ".join(f"'{h}'" for h in header) or "none"
            needed = ", or ".join(" and ".join(f"'{c}'" for c in cs) for cs in csv_columns)
            raise InvalidInputError(f"The CSV needs the columns {needed}. Its columns: {have}.")
        return rows
    raise InvalidInputError("Upload a .jsonl, .json or .csv file.")


def decode_text(data: bytes) -> str:
    """An uploaded file's text; an empty or non-UTF-8 file is refused in plain words."""
    if not data.strip():
        raise InvalidInputError("The file is empty.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInputError(
            f"The file is not UTF-8 text (byte {error.start} cannot be read). Save it as UTF-8 "
            "and upload it again."
        ) from None


def parse_dataset(name: str, data: bytes, max_problems: int = 200) -> Dataset:
    """Read a dataset and check every row; problems are collected, never raised one by one."""
    rows = read_rows(name, decode_text(data))
    if not rows:
        raise InvalidInputError("The file has no examples.")
    first = next((row for _, row in rows if isinstance(row, dict)), None)
    if first is None and isinstance(rows[0][1], ValueError):  # no row could be read at all
        problems = [str(Problem(n, str(row))) for n, row in rows[:3]]
        raise InvalidInputError("No example could be read. " + " ".join(problems))
    shape = _detect(first) if first is not None else None
    if shape is None:
        fields = ", ".join(f"'{k}'" for k in (first or {})) or "none"
        raise InvalidInputError(
            "The examples are in no shape the studio knows. Use 'instruction'/'output' (alpaca), "
            "'messages' (chat), 'conversations' (ShareGPT), 'prompt'/'completion' or "
            f"'question'/'answer'. The first example has: {fields}."
        )
    dataset = Dataset(name, shape, content_hash=hashlib.sha256(data).hexdigest())
    for number, row in rows:
        if isinstance(row, ValueError):
            problems = [str(row)]
            messages: list[Message] = []
        else:
            messages, problems = to_messages(row, shape)
        if problems:
            if len(dataset.problems) < max_problems:
                dataset.problems.extend(Problem(number, p) for p in problems)
            continue
        dataset.examples.append(messages)
        dataset.lines.append(number)
    return dataset


# `{{name}}`, `{{ model_author }}`: slots that published datasets leave for the user to fill
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_ .-]{0,40}?)\s*\}\}")


def placeholders(dataset: Dataset) -> dict[str, int]:
    """The placeholders in the examples, each with the number of examples that hold it, most
    frequent first."""
    found: dict[str, int] = {}
    for messages in dataset.examples:
        names = {
            m.group(1) for message in messages for m in PLACEHOLDER.finditer(message["content"])
        }
        for name in names:
            found[name] = found.get(name, 0) + 1
    return dict(sorted(found.items(), key=lambda item: -item[1]))


def fill_placeholders(dataset: Dataset, values: dict[str, str]) -> Dataset:
    """The dataset with each placeholder that has a value replaced by it (others stay as they
    are); its hash covers the values, so that a run records what it learned from."""
    chosen = {name: " ".join(value.split()) for name, value in values.items() if value.strip()}
    if not chosen:
        return dataset

    def fill(text: str) -> str:
        return PLACEHOLDER.sub(lambda m: chosen.get(m.group(1), m.group(0)), text)

    filled = hashlib.sha256(
        (dataset.content_hash + json.dumps(chosen, sort_keys=True)).encode()
    ).hexdigest()
    return replace(
        dataset,
        examples=[[{**m, "content": fill(m["content"])} for m in ex] for ex in dataset.examples],
        content_hash=filled,
    )


def render(messages: list[Message], tokenizer: Any) -> str:
    """An example exactly as the model will see it, through its chat template."""
    return str(tokenizer.apply_chat_template(messages, tokenize=False))


def encode(messages: list[Message], tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: the loss counts the assistant's tokens only (-100 elsewhere).

    Each assistant turn's tokens are found as the difference between the conversation rendered
    up to the turn's start (with the generation prompt) and up to its end, which holds for
    prefix-stable templates such as ChatML.
    """
    ids: list[int] = []
    labels: list[int] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _ids(tokenizer, messages[:index], add_generation_prompt=True)
        through = _ids(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if through[: len(before)] != before:  # a template that is not prefix-stable
            before = through[: len(before)]
        labels += [-100] * (len(before) - len(ids)) + through[len(before) :]
        ids = through
    return ids[:max_length], labels[:max_length]


def _ids(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    )


@dataclass(frozen=True)
class TokenStats:
    rows: int
    total_tokens: int
    answer_tokens: int
    shortest: int
    median: int
    longest: int
    cut: int  # rows longer than the maximum length


def token_stats(dataset: Dataset, tokenizer: Any, max_length: int) -> TokenStats:
    lengths, answers = [], 0
    for messages in dataset.examples:
        ids, labels = encode(messages, tokenizer, 10**9)
        lengths.append(len(ids))
        answers += sum(1 for label in labels[:max_length] if label != -100)
    return summarise(lengths, answers, max_length)


def summarise(lengths: list[int], answer_tokens: int, max_length: int) -> TokenStats:
    """Statistics of examples of these full lengths (before the cut at `max_length`)."""
    ordered = sorted(lengths) or [0]
    return TokenStats(
        rows=len(lengths),
        total_tokens=sum(min(n, max_length) for n in lengths),
        answer_tokens=answer_tokens,
        shortest=ordered[0],
        median=ordered[len(ordered) // 2],
        longest=ordered[-1],
        cut=sum(1 for n in lengths if n > max_length),
    )
