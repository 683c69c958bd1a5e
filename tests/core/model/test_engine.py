"""The shared engine: every session's answers decode in one continuous batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from core.errors import BusyError
from core.model import compute, decode
from core.model.chat import ChatRequest, ChatStream, SamplingParams
from core.model.local import HFChatModel
from core.training import adapters
from tests.support.training import trained

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)
LONG = SamplingParams(temperature=0.0, max_new_tokens=48)
WAIT_S = 60


def ask(text: str, adapter: str | None = None) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], "Be brief.", adapter)


QUESTIONS = [
    ask("What is the capital of France?"),
    ask("Name three colours of the rainbow."),
    ask("The quick brown fox jumps over the lazy dog. What jumps?"),
    ask("Count from one to five."),
]


@contextmanager
def torch_thread_held() -> Iterator[None]:
    """Keep the torch thread busy until the block ends, so that everything submitted inside it
    is waiting when the engine's loop starts."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(WAIT_S)

    job = compute.submit(hold)
    assert holding.wait(WAIT_S)
    try:
        yield
    finally:
        release.set()
        job.result(WAIT_S)


def first_tokens(stream: ChatStream, count: int) -> Iterator[str]:
    """Read `count` pieces; the iterator returned goes on from there (dropping it would close
    the stream)."""
    pieces = iter(stream)
    for _ in range(count):
        next(pieces)
    return pieces


def alone(chat: HFChatModel, request: ChatRequest, params: SamplingParams = GREEDY) -> str:
    return chat.stream_many([request], params)[0].read().text


def test_rows_of_several_sessions_decode_in_one_batch(tuned) -> None:
    chat, _, _ = tuned
    expected = [alone(chat, request) for request in QUESTIONS]
    chat.engine.step_sizes.clear()
    results: dict[int, str] = {}

    def session(index: int, streams: list[ChatStream]) -> None:
        results[index] = streams[0].read().text

    with torch_thread_held():  # four visitors press Enter at the same moment
        sessions = [chat.stream_many([request], GREEDY) for request in QUESTIONS]
    threads = [threading.Thread(target=session, args=item) for item in enumerate(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert [results[i] for i in range(4)] == expected
    assert max(chat.engine.step_sizes) == 4  # one forward pass for the four visitors
    assert chat.engine.step_sizes[4] >= 1


def test_a_row_that_joins_mid_batch_gets_the_text_it_gets_alone(tuned) -> None:
    chat, run_id, _ = tuned
    first, joining = ask("Count from one to twenty.", run_id), QUESTIONS[2]
    expected_first, expected_joining = alone(chat, first, LONG), alone(chat, joining)
    chat.engine.step_sizes.clear()
    (running,) = chat.stream_many([first], LONG)
    rest = first_tokens(running, 4)  # decoding has begun
    (late,) = chat.stream_many([joining], GREEDY)
    assert late.read().text == expected_joining
    list(rest)
    assert running.answer is not None and running.answer.text == expected_first
    assert chat.engine.step_sizes[2] >= 1  # they did decode side by side


def test_cancelling_one_row_leaves_the_others_text_unchanged(tuned) -> None:
    chat, run_id, _ = tuned
    requests = [QUESTIONS[0], ask("Count from one to twenty.", run_id), QUESTIONS[3]]
    expected = [alone(chat, request, LONG) for request in requests]
    with torch_thread_held():
        streams = [chat.stream_many([request], LONG)[0] for request in requests]
    _ = first_tokens(streams[1], 2)
    streams[1].close()  # that visitor pressed New conversation
    assert streams[1].answer is not None and streams[1].answer.timings.new_tokens < 48
    assert [streams[0].read().text, streams[2].read().text] == [expected[0], expected[2]]


def test_an_adapter_row_and_a_base_row_of_two_sessions_get_their_own_answers(tuned) -> None:
    chat, run_id, _ = tuned
    base, tuned_question = QUESTIONS[0], ask(QUESTIONS[0].messages[0]["content"], run_id)
    expected = [alone(chat, base), alone(chat, tuned_question)]
    assert expected[0] != expected[1]  # the adapter changes the answer
    chat.engine.step_sizes.clear()
    with torch_thread_held():
        streams = [chat.stream_many([r], GREEDY)[0] for r in (base, tuned_question)]
    assert [stream.read().text for stream in streams] == expected
    assert chat.engine.step_sizes[2] >= 1


def test_past_the_waiting_limit_a_visitor_is_told_how_many_are_ahead(tuned) -> None:
    chat, _, _ = tuned
    limit = chat.engine.max_waiting
    chat.engine.max_waiting = 2
    try:
        with torch_thread_held():
            waiting = [chat.stream_many([request], GREEDY)[0] for request in QUESTIONS[:2]]
            with pytest.raises(BusyError, match=r"busy: 2 answers are waiting before yours"):
                chat.stream_many([QUESTIONS[2]], GREEDY)
            background = chat.stream_many([QUESTIONS[3]], GREEDY, background=True)[0]
    finally:
        chat.engine.max_waiting = limit
    assert all(stream.read().timings.new_tokens > 0 for stream in [*waiting, background])
    assert chat.engine.waiting() == 0


def test_people_are_admitted_before_background_answers(tuned) -> None:
    chat, _, _ = tuned
    size = chat.engine.max_batch
    chat.engine.max_batch = 1
    try:
        with torch_thread_held():  # the evaluation's row arrived first
            evaluation = chat.stream_many([QUESTIONS[0]], GREEDY, background=True)[0]
            person = chat.stream_many([QUESTIONS[1]], GREEDY)[0]
        person.read()
        evaluation.read()
    finally:
        chat.engine.max_batch = size
    assert evaluation.answer is not None and person.answer is not None
    # The person's answer was complete before the evaluation's first token.
    assert person._source is not None and evaluation._source is not None
    assert person._source.finished_at is not None and evaluation._source.first_token_at
    assert person._source.finished_at <= evaluation._source.first_token_at


def test_an_adapter_loads_between_two_tokens_of_a_running_answer(tuned, monkeypatch) -> None:
    chat, _, settings = tuned
    other = trained(settings, "Other")
    real_step, held = decode.Batch.step, threading.Event()

    def step_until_a_job_waits(batch: decode.Batch) -> None:
        """Decode one token; after the first few, wait (bounded) until another torch job is
        queued, so that the answer is surely still running when that job arrives."""
        real_step(batch)
        if not held.is_set() and batch.rows and batch.rows[0].new_tokens >= 3:
            deadline = time.monotonic() + WAIT_S
            while not compute.waiting() and time.monotonic() < deadline:
                time.sleep(0.001)
            held.set()

    monkeypatch.setattr(decode.Batch, "step", step_until_a_job_waits)
    (running,) = chat.stream_many([ask("Count from one to a hundred.")], LONG)
    _ = first_tokens(running, 2)
    adapters.attach(chat, settings, other)  # queued on the torch thread while it decodes
    assert held.is_set()
    assert not running._source.finished  # type: ignore[union-attr]  # loaded mid-answer
    running.close()
    assert alone(chat, ask("hi", other))  # and it answers


def conversation(turns: int) -> ChatRequest:
    """A conversation of `turns` questions about a long passage, the last one unanswered."""
    passage = "The quick brown fox jumps over the lazy dog near the river bank. " * 6
    messages = [{"role": "user", "content": f"Read this: {passage}"}]
    for turn in range(turns - 1):
        messages += [
            {"role": "assistant", "content": f"I read it ({turn})."},
            {"role": "user", "content": f"What jumps? ({turn})"},
        ]
    return ChatRequest(messages, "Be brief.")


def test_a_prompt_that_starts_like_an_earlier_one_is_read_from_where_they_part(
    tuned, monkeypatch
) -> None:
    chat, run_id, _ = tuned
    monkeypatch.setattr(decode, "CHUNK", 128)  # the tiny model's prompts are shorter than 512
    first, longer = conversation(1), conversation(2)
    chat.engine.prefixes.clear()  # nothing read before
    fresh = alone(chat, longer)  # read from the start
    chat.engine.prefixes.clear()
    alone(chat, first)
    before = chat.engine.prefixes.reused_tokens
    assert alone(chat, longer) == fresh  # the same numbers, so the same words
    assert (
        chat.engine.prefixes.reused_tokens - before >= decode.CHUNK
    )  # the first turn was not read again
    # Another adapter reads the same words differently: nothing of the base model's is reused.
    before = chat.engine.prefixes.reused_tokens
    alone(chat, ChatRequest(longer.messages, longer.system_prompt, run_id))
    assert chat.engine.prefixes.reused_tokens == before


def test_prompts_read_lately_are_kept_within_their_budget(tuned) -> None:
    chat, _, _ = tuned
    prefixes = chat.engine.prefixes
    budget, prefixes.budget_bytes = prefixes.budget_bytes, 1  # room for one prompt only
    try:
        alone(chat, conversation(1))
        alone(chat, QUESTIONS[0])
        assert len(prefixes._entries) == 1
    finally:
        prefixes.budget_bytes = budget
