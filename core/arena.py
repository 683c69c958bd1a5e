"""The arena: one question answered four ways, side by side, with the same decoding settings.

- base:   the base model as it is
- tuned:  the base model with a LoRA adapter
- rag:    the base model reading the passages retrieved from a knowledge base
- hybrid: the tuned model reading the same passages

Each mode keeps its own conversation. The four answers are generated together in one batch
(core.decode), so they cost about as much as one. Conversations are saved as JSON under
`data/arena/`, and blind votes add up to a leaderboard.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidInputError
from core.generate import ChatModel, ChatRequest, ChatStream, Message, SamplingParams
from core.ids import check_id, is_id, new_id
from core.retrieve import Passage
from core.runs import atomic_write_json
from core.settings import Settings, check_writable
from core.typed import parse


@dataclass(frozen=True)
class Mode:
    key: str
    label: str
    description: str
    uses_adapter: bool
    uses_passages: bool


MODES: dict[str, Mode] = {
    mode.key: mode
    for mode in (
        Mode(
            "base", "Base model", "The model as it is: no documents, no fine-tuning.", False, False
        ),
        Mode("tuned", "Fine-tuned (LoRA)", "The model with your adapter.", True, False),
        Mode("rag", "RAG", "The model reading passages found in your documents.", False, True),
        Mode("hybrid", "Fine-tuned + RAG", "Your adapter, reading the same passages.", True, True),
    )
}
BLIND_LABELS = "ABCD"

# Passages first, each with its source, then the question, then how to answer. Measured on eight
# invented facts with the default model (greedy): this layout answered 7 of 8 correctly; the
# instructions first and the question last, 5 of 8; the base model without passages, 0.
RAG_INSTRUCTIONS = "Use these passages to answer."
RAG_ANSWER = "Answer briefly, citing the passage like [1]."
NO_PASSAGES = (
    "No passages were found in the knowledge base for this question: this answer did not read "
    "your documents."
)
# Anything in a passage or its source that could pose as our own structure loses its power: a
# line starting like a passage number ("[2] ...") or like the question line ("Question: ...").
# The layout itself stays as measured above: fencing passages in <passage> tags and telling the
# system prompt they are data cost the default model right answers (RAG answered 3 of the
# invented facts of tests/core/test_evaluate_real.py, where 5 or more are expected).
_NUMBER_LINE = re.compile(r"^(\s*)\[(\d+)\]", re.MULTILINE)
_QUESTION_LINE = re.compile(r"^(\s*)question\s*:", re.IGNORECASE | re.MULTILINE)


def quoted(text: str) -> str:
    """`text` as it may stand among the numbered passages: no line posing as another passage's
    number or as the question."""
    text = _NUMBER_LINE.sub(r"\1(\2)", text)
    return _QUESTION_LINE.sub(r"\1(question)", text).strip()


def rag_message(question: str, passages: Sequence[Passage]) -> str:
    """The question as the RAG and hybrid modes ask it: numbered passages with their sources;
    nothing in a document can pose as the question or another passage."""
    if not passages:
        return question
    blocks = [
        f"[{n}] {quoted(p.text)}\n(Source: {' '.join(quoted(p.citation).split())})"
        for n, p in enumerate(passages, 1)
    ]
    return "\n\n".join([RAG_INSTRUCTIONS, *blocks, f"Question: {question}\n{RAG_ANSWER}"])


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


def requests(
    conversation: Conversation,
    question: str,
    passages: Sequence[Passage],
    modes: Sequence[str],
    system_prompt: str,
    adapter: str | None = None,
    adapter_system_prompt: str | None = None,
) -> dict[str, ChatRequest]:
    """What each mode is asked. The tuned modes get the instructions the adapter was trained
    under (it answers best with them); the others get the studio's."""
    built = {}
    for key in modes:
        mode = MODES[key]
        if mode.uses_adapter and adapter is None:
            continue
        content = rag_message(question, passages) if mode.uses_passages else question
        built[key] = ChatRequest(
            [*conversation.history(key), {"role": "user", "content": content}],
            adapter_system_prompt if mode.uses_adapter and adapter_system_prompt else system_prompt,
            adapter if mode.uses_adapter else None,
        )
    return built


def ask(
    chat: ChatModel, built: dict[str, ChatRequest], params: SamplingParams
) -> dict[str, ChatStream]:
    """Start every mode's answer in one batch; one stream per mode."""
    streams = chat.stream_many(list(built.values()), params)
    return dict(zip(built, streams, strict=True))


def record(stream: ChatStream, error: str = "") -> ModeAnswer:
    """A finished stream as a saved answer."""
    answer = stream.answer
    if answer is None:
        return ModeAnswer(prompt=stream.prompt, error=error or "No answer.")
    t = answer.timings
    return ModeAnswer(
        text=answer.text,
        prompt=stream.prompt,
        notices=list(answer.notices),
        error=error,
        prompt_tokens=t.prompt_tokens,
        new_tokens=t.new_tokens,
        time_to_first_token_s=round(t.time_to_first_token_s, 3),
        tokens_per_s=round(t.tokens_per_s, 1),
        total_s=round(t.total_s, 3),
    )


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
                vote = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash: skip it
            if vote.get("winner") in wins:
                wins[vote["winner"]] += 1
            for mode in vote.get("shown", []):
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


UNAVAILABLE = {
    "adapter": "Train an adapter first to see fine-tuned answers.",
    "knowledge": "Create a knowledge base first to see answers that read your documents.",
}
