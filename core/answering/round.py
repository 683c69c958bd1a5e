"""One question round: a question asked in several modes at once, the one way every page asks.

The round retrieves once, builds each mode's request (its own history, the adapter's
instructions for the tuned modes, the passages for the reading modes) and streams every request
as one batch (core.model.engine), so four answers cost about as much as one. Whatever keeps a
mode from answering (no adapter, no knowledge base, an adapter that cannot load, a search that
fails) becomes that mode's plain problem; the other modes still answer.

The Arena streams one round into its columns; the evaluation runner and the freshness check
stream many rounds in one batch (`ask_many`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.answering.conversations import Conversation, Exchange, ModeAnswer, passage_dicts
from core.answering.modes import (
    MODES,
    NO_PASSAGES,
    READING_ENDS,
    UNAVAILABLE,
    missing,
    rag_messages,
    reading_favour,
)
from core.answering.reading import Sentence, select
from core.errors import StudioError
from core.knowledge.retrieve import Passage, search
from core.knowledge.store import KnowledgeBase
from core.model.chat import ChatModel, ChatRequest, ChatStream, SamplingParams
from core.settings import Settings
from core.training import adapters
from core.training.adapters import AdapterInfo


@dataclass
class Round:
    """A question on its way: what each mode is asked, and, once started, its stream."""

    question: str
    modes: list[str]  # the modes asked for, in the order they are shown
    passages: list[Passage] = field(default_factory=list)
    sentences: list[Sentence] = field(default_factory=list)  # what the reading modes read
    retrieval_s: float = 0.0
    unavailable: dict[str, str] = field(default_factory=dict)  # mode -> "adapter" | "knowledge"
    problems: dict[str, str] = field(default_factory=dict)  # mode -> why it could not answer
    requests: dict[str, ChatRequest] = field(default_factory=dict)
    streams: dict[str, ChatStream] = field(default_factory=dict)

    @property
    def answering(self) -> list[str]:
        """The modes that have a request (and, once started, a stream)."""
        return [key for key in self.modes if key in self.requests]


def attach_adapter(
    settings: Settings, chat: ChatModel, run_id: str | None
) -> tuple[AdapterInfo | None, str]:
    """The adapter of `run_id` loaded into `chat`, or None and why it could not be."""
    if not run_id:
        return None, ""
    try:
        return adapters.attach(chat, settings, run_id), ""
    except StudioError as error:
        return None, str(error)


def prepare(
    question: str,
    modes: Sequence[str],
    *,
    conversation: Conversation | None = None,
    system_prompt: str,
    adapter: AdapterInfo | None = None,
    adapter_problem: str = "",
    kb: KnowledgeBase | None = None,
    kb_problem: str = "",
    top_k: int = 4,
) -> Round:
    """Retrieve once and build every mode's request. `adapter` is already attached (see
    `attach_adapter`); `adapter_problem` and `kb_problem` say why the chosen adapter or
    knowledge base could not be used."""
    wants_adapter = adapter is not None or bool(adapter_problem)
    wants_knowledge = kb is not None or bool(kb_problem)
    shown = [key for key in modes if key in MODES]
    round_ = Round(question=question, modes=shown)
    for key in shown:
        if reason := missing(key, wants_adapter, wants_knowledge):
            round_.unavailable[key] = reason
        elif MODES[key].uses_adapter and adapter is None:
            round_.problems[key] = adapter_problem
        elif MODES[key].uses_passages and kb is None:
            round_.problems[key] = kb_problem
    reading = [k for k in shown if MODES[k].uses_passages and k not in round_.unavailable]
    if kb is not None and reading:
        try:
            result = search(kb, question, top_k)
            round_.passages, round_.retrieval_s = result.passages, result.seconds
            round_.sentences = select(question, result.passages, kb.store.embeddings)
        except StudioError as error:
            for key in reading:
                round_.problems.setdefault(key, str(error))
    shown_modes = [k for k in shown if k not in round_.unavailable and k not in round_.problems]
    round_.requests = requests(
        conversation or Conversation(),
        question,
        round_.sentences,
        shown_modes,
        system_prompt,
        adapter.run_id if adapter is not None else None,
        adapter.system_prompt if adapter is not None else None,
    )
    return round_


def requests(
    conversation: Conversation,
    question: str,
    sentences: Sequence[Sentence],
    modes: Sequence[str],
    system_prompt: str,
    adapter: str | None = None,
    adapter_system_prompt: str | None = None,
) -> dict[str, ChatRequest]:
    """What each mode is asked: its own history, then the question (for the reading modes,
    after worked examples and with the sentences that answer it, core.answering.reading). The
    tuned modes get the instructions the adapter was trained under (it answers best with them);
    the others get the studio's. Without `adapter`, the tuned modes are left out."""
    built = {}
    for key in modes:
        mode = MODES[key]
        if mode.uses_adapter and adapter is None:
            continue
        asked = (
            rag_messages(question, sentences)
            if mode.uses_passages
            else [{"role": "user", "content": question}]
        )
        examples, last = asked[:-1], asked[-1]
        built[key] = ChatRequest(
            [*examples, *conversation.history(key), last],
            adapter_system_prompt if mode.uses_adapter and adapter_system_prompt else system_prompt,
            adapter if mode.uses_adapter else None,
            READING_ENDS if examples else None,
            reading_favour(sentences) if examples else None,
        )
    return built


def start(
    chat: ChatModel,
    rounds: Sequence[Round],
    params: SamplingParams,
    seed: int | None = None,
    *,
    background: bool = False,
) -> None:
    """Start every request of every round as one batch (`background`: behind people's
    answers). A StudioError here (the model cannot answer at all, or it is busy) is raised; a
    problem of one answer shows up when its stream is read."""
    flat = [(round_, key) for round_ in rounds for key in round_.answering]
    streams = chat.stream_many(
        [r.requests[k] for r, k in flat], params, seed=seed, background=background
    )
    for (round_, key), stream in zip(flat, streams, strict=True):
        round_.streams[key] = stream


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


def finish(
    round_: Round, errors: dict[str, str] | None = None, blind_order: Sequence[str] = ()
) -> Exchange:
    """The round, its streams read to the end, as an exchange: every mode asked has an answer,
    a problem or what it is missing. `errors` are the messages that ended streams early."""
    errors = errors or {}
    answers: dict[str, ModeAnswer] = {}
    for key in blind_order or round_.modes:
        if key in round_.streams:
            answers[key] = record(round_.streams[key], errors.get(key, ""))
            if MODES[key].uses_passages and not round_.passages:
                answers[key].notices.insert(0, NO_PASSAGES)
        elif key in round_.unavailable:
            reason = round_.unavailable[key]
            answers[key] = ModeAnswer(error=UNAVAILABLE[reason], unavailable=reason)
        else:
            answers[key] = ModeAnswer(error=round_.problems.get(key, "No answer."))
    return Exchange(
        question=round_.question,
        passages=passage_dicts(round_.passages),
        retrieval_s=round(round_.retrieval_s, 3),
        answers=answers,
        blind_order=list(blind_order),
    )


def read_all(round_: Round) -> dict[str, str]:
    """Read every stream of the round to its end; the message of each that ended on a problem."""
    errors = {}
    for key, stream in round_.streams.items():
        try:
            stream.read()
        except StudioError as error:
            errors[key] = str(error)
    return errors


def ask_many(
    chat: ChatModel,
    questions: Sequence[str],
    modes: Sequence[str],
    *,
    system_prompt: str,
    params: SamplingParams,
    adapter: AdapterInfo | None = None,
    kb: KnowledgeBase | None = None,
    top_k: int = 4,
    seed: int | None = None,
    background: bool = False,
) -> list[Exchange]:
    """Several independent questions in every mode, generated together; one exchange each.
    `adapter` is already attached (`adapters.attach`); `background` answers wait behind
    people's."""
    rounds = [
        prepare(question, modes, system_prompt=system_prompt, adapter=adapter, kb=kb, top_k=top_k)
        for question in questions
    ]
    start(chat, rounds, params, seed=seed, background=background)
    return [finish(round_, read_all(round_)) for round_ in rounds]
