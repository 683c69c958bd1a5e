"""Arena conversations: exchanges of one question answered in several modes (core.answering.
modes), each mode keeping its own history; saved as JSON under `data/arena/`, with blind votes
that add up to a leaderboard, and exports as Markdown or JSON.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from core.answering.modes import MODES
from core.errors import InvalidInputError
from core.files import atomic_write_json
from core.ids import check_id, is_id, new_id
from core.knowledge.retrieve import Passage
from core.model.chat import Message
from core.settings import Settings, check_writable
from core.typed import parse

BLIND_LABELS = "ABCD"


@dataclass
class ModeAnswer:
    text: str = ""
    prompt: str = ""  # exactly what the model read, chat template included
    notices: list[str] = field(default_factory=list)
    error: str = ""  # a plain message when this mode could not answer
    unavailable: str = ""  # "adapter" or "knowledge": what to create before this mode can answer
    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token_s: float = 0.0
    tokens_per_s: float = 0.0
    total_s: float = 0.0


@dataclass
class Exchange:
    question: str
    passages: list[dict[str, Any]]  # Passage fields, for RAG and hybrid
    retrieval_s: float
    answers: dict[str, ModeAnswer]
    asked: float = field(default_factory=time.time)
    blind_order: list[str] = field(default_factory=list)  # modes behind A, B, C, D
    vote: str = ""  # the mode voted best, once voted


@dataclass
class Conversation:
    id: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)
    model: str = ""
    adapter: str = ""  # run id
    adapter_name: str = ""
    knowledge_base: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    exchanges: list[Exchange] = field(default_factory=list)

    def history(self, mode: str) -> list[Message]:
        """The conversation as `mode` lived it: the questions as asked, without the passages
        of earlier turns (each question retrieves its own), and that mode's answers."""
        messages: list[Message] = []
        for exchange in self.exchanges:
            answer = exchange.answers.get(mode)
            if answer is None or answer.error or not answer.text:
                continue
            messages.append({"role": "user", "content": exchange.question})
            messages.append({"role": "assistant", "content": answer.text})
        return messages

    @classmethod
    def from_dict(cls, data: Any) -> Conversation:
        """A conversation read from disk or a bundle: every field type-checked, the id safe to
        become a file name."""
        conversation = parse(cls, data, "A saved conversation")
        check_id(conversation.id, "conversation")
        return conversation


def passage_dicts(passages: Sequence[Passage]) -> list[dict[str, Any]]:
    """Passages as plain JSON-ready dicts (saved with the conversation)."""
    return [asdict(p) | {"found_by": list(p.found_by), "citation": p.citation} for p in passages]


def blind_order(modes: Sequence[str], seed: int | None = None) -> list[str]:
    order = list(modes)
    random.Random(seed).shuffle(order)  # noqa: S311 (hides labels from a voter, not secrets)
    return order


# -- storage -----------------------------------------------------------------------------------
_votes_lock = threading.Lock()


def arena_dir(settings: Settings) -> Path:
    return settings.data_dir / "arena"


def conversation_path(settings: Settings, conversation_id: str) -> Path:
    """Where a conversation is stored; refused for an id that is not one of ours."""
    return (
        arena_dir(settings) / "conversations" / f"{check_id(conversation_id, 'conversation')}.json"
    )


def save(settings: Settings, conversation: Conversation) -> Path:
    check_writable(settings, "Saving conversations")
    path = conversation_path(settings, conversation.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, asdict(conversation))
    return path


def load(settings: Settings, conversation_id: str) -> Conversation:
    try:
        return Conversation.from_dict(
            json.loads(conversation_path(settings, conversation_id).read_text())
        )
    except (OSError, ValueError) as error:
        raise InvalidInputError("That conversation cannot be opened.") from error


def conversation_ids(settings: Settings) -> list[str]:
    """The saved conversations' ids, newest first."""
    folder = arena_dir(settings) / "conversations"
    found = [p for p in folder.glob("*.json") if is_id(p.stem)]
    return [p.stem for p in sorted(found, key=lambda p: -p.stat().st_mtime)]


class Vote(BaseModel):
    """One line of `votes.jsonl`, type-checked when read back."""

    time: float = 0.0
    winner: str
    shown: list[str] = []


def record_vote(settings: Settings, exchange: Exchange, winner: str) -> None:
    """Store a blind vote: which mode won among those shown."""
    check_writable(settings, "Voting")
    if winner not in exchange.blind_order:
        raise ValueError(f"'{winner}' was not one of the answers shown")
    exchange.vote = winner
    line = {"time": time.time(), "winner": winner, "shown": exchange.blind_order}
    path = arena_dir(settings) / "votes.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _votes_lock, path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def leaderboard(settings: Settings) -> list[dict[str, Any]]:
    """Wins per mode over every blind vote, best first, with how often each was in the race."""
    wins = dict.fromkeys(MODES, 0)
    shown = dict.fromkeys(MODES, 0)
    path = arena_dir(settings) / "votes.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                vote = Vote.model_validate_json(line)
            except ValidationError:
                continue  # a line cut short by a crash, or not a vote: skip it
            if vote.winner in wins:
                wins[vote.winner] += 1
            for mode in vote.shown:
                if mode in shown:
                    shown[mode] += 1
    rows = [
        {
            "mode": key,
            "label": MODES[key].label,
            "wins": wins[key],
            "votes": shown[key],
            "win_rate": wins[key] / shown[key] if shown[key] else 0.0,
        }
        for key in MODES
    ]
    return sorted(rows, key=lambda r: (-r["wins"], -r["win_rate"]))


# -- export ------------------------------------------------------------------------------------
def to_json(conversation: Conversation) -> str:
    return json.dumps(asdict(conversation), indent=2, ensure_ascii=False)


def to_markdown(conversation: Conversation) -> str:
    """The conversation as a readable Markdown report."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(conversation.created))
    lines = [f"# Arena conversation, {when}", ""]
    lines.append(f"- Model: {conversation.model}")
    if conversation.adapter_name:
        lines.append(f"- Adapter: {conversation.adapter_name}")
    if conversation.knowledge_base:
        lines.append(f"- Knowledge base: {conversation.knowledge_base}")
    if conversation.params:
        settings = ", ".join(f"{k} {v}" for k, v in conversation.params.items())
        lines.append(f"- Settings: {settings}")
    for number, exchange in enumerate(conversation.exchanges, 1):
        lines += ["", f"## {number}. {exchange.question}", ""]
        for key, answer in exchange.answers.items():
            lines.append(f"### {MODES[key].label}")
            lines.append("")
            lines.append(answer.text or f"*{answer.error or 'No answer.'}*")
            lines.append("")
            for notice in answer.notices:
                lines.append(f"> {notice}")
            if answer.new_tokens:
                lines.append(
                    f"*{answer.new_tokens} tokens, first after {answer.time_to_first_token_s:.2f} "
                    f"s, {answer.tokens_per_s:.1f} tokens/s, {answer.total_s:.1f} s in all*"
                )
                lines.append("")
        if exchange.passages:
            lines.append(f"**Sources** (retrieved in {exchange.retrieval_s:.2f} s)")
            lines.append("")
            for n, p in enumerate(exchange.passages, 1):
                lines.append(f"{n}. {p['citation']} (score {p['score']:.3f})")
        if exchange.vote:
            lines += ["", f"Blind vote: **{MODES[exchange.vote].label}**"]
    return "\n".join(lines) + "\n"
