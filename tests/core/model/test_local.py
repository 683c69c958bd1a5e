import threading
import time

import pytest
import torch

from core.errors import GenerationError, InvalidInputError
from core.model import decode, loading, loops
from core.model.chat import ChatStream, SamplingParams, Timings, clean_messages
from core.model.local import HFChatModel
from core.settings import Settings

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    settings = Settings(
        _env_file=None, data_dir=tmp_path_factory.mktemp("d"), base_model=str(tiny_model_dir)
    )
    return loading.load_chat_model(settings)


@pytest.fixture
def chat(loaded) -> HFChatModel:
    return HFChatModel(loaded)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_streamed_pieces_make_the_answer_and_timings_add_up(chat: HFChatModel) -> None:
    stream = chat.stream_chat(ask("What is the capital of France?"), GREEDY, "Be brief.")
    pieces = list(stream)
    answer = stream.answer
    assert answer is not None
    assert len(pieces) >= 2  # it really streamed, not one block at the end
    assert answer.text == "".join(pieces).strip()
    timings = answer.timings
    assert 1 <= timings.new_tokens <= GREEDY.max_new_tokens
    assert 0 < timings.time_to_first_token_s <= timings.total_s
    assert timings.prompt_tokens == stream.prompt_tokens > 5
    assert timings.tokens_per_s > 0


def test_greedy_answers_are_repeatable(chat: HFChatModel) -> None:
    first = chat.stream_chat(ask("Paris?"), GREEDY).read().text
    second = chat.stream_chat(ask("Paris?"), GREEDY).read().text
    assert first == second


def test_prompt_uses_the_chat_template_with_system_prompt_and_history(chat: HFChatModel) -> None:
    conversation = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    ids, notices, max_new = chat.build_prompt(conversation, "Be brief.", 16)
    text = chat.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.index("first answer") < text.index("second question")
    assert text.endswith("<|im_start|>assistant\n")
    assert notices == [] and max_new == 16


def test_sampling_settings_reach_the_decoder(chat: HFChatModel, monkeypatch) -> None:
    seen = []
    real_submit = chat.engine.submit

    def spy(rows):
        seen.extend((row.sampling, row.max_new_tokens) for row in rows)
        return real_submit(rows)

    monkeypatch.setattr(chat.engine, "submit", spy)
    chat.stream_chat(ask("hi"), SamplingParams(temperature=0.7, top_p=0.8, max_new_tokens=5)).read()
    [(sampling, length)] = seen
    assert (sampling.temperature, sampling.top_p, length) == (0.7, 0.8, 5)
    assert chat.tokenizer.eos_token_id in chat.engine.eos_ids


def test_the_models_own_repetition_penalty_applies_unless_the_user_sets_one(
    chat: HFChatModel, monkeypatch
) -> None:
    seen = []
    real_submit = chat.engine.submit
    monkeypatch.setattr(chat.engine, "submit", lambda rows: seen.extend(rows) or real_submit(rows))
    config = chat.loaded.model.generation_config
    monkeypatch.setattr(config, "repetition_penalty", 1.3)
    chat.stream_chat(ask("hi"), GREEDY).read()
    chat.stream_chat(ask("hi"), SamplingParams(0.0, 1.0, 12, repetition_penalty=1.0)).read()
    monkeypatch.setattr(config, "repetition_penalty", None)
    chat.stream_chat(ask("hi"), GREEDY).read()
    assert [row.sampling.repetition_penalty for row in seen] == [1.3, 1.0, 1.0]


def test_an_answer_that_loops_stops_the_row_and_is_marked(loaded, monkeypatch) -> None:
    chat = HFChatModel(loaded)
    calls = []

    def loops_at_the_fourth_piece(text: str) -> tuple[int, int] | None:
        calls.append(text)
        return (1, 3) if len(calls) >= 4 else None

    monkeypatch.setattr(loops, "repeated_tail", loops_at_the_fourth_piece)
    answer = chat.stream_chat(ask("hi"), SamplingParams(0.0, 1.0, 200)).read()
    assert answer.looped and answer.notices[-1] == loops.NOTICE
    assert answer.timings.new_tokens < 20  # the row stopped at the next token or so
    monkeypatch.undo()
    assert chat.stream_chat(ask("hi"), GREEDY).read().timings.new_tokens == 12


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_messages_are_refused_plainly(chat: HFChatModel, text: str) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        chat.stream_chat(ask(text), GREEDY)


def test_clean_messages_drops_empty_turns_and_needs_a_question() -> None:
    kept = clean_messages(
        [{"role": "user", "content": " a "}, {"role": "assistant", "content": ""}, *ask("b")]
    )
    assert kept == [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(InvalidInputError):
        clean_messages([{"role": "assistant", "content": "only an answer"}])


def test_a_message_longer_than_the_context_is_cut_with_a_notice(loaded) -> None:
    chat = HFChatModel(loaded, context_window=128)
    ids, notices, max_new = chat.build_prompt(ask("word " * 2000), "Be brief.", 32)
    assert len(ids) <= 128 - max_new
    assert len(notices) == 1 and "too long" in notices[0] and "first" in notices[0]
    stream = chat.stream_chat(ask("word " * 2000), SamplingParams(0.0, 0.9, 32), "Be brief.")
    assert stream.notices == tuple(notices)
    assert stream.read().notices == tuple(notices)


def test_old_turns_are_dropped_before_the_question_is_cut(loaded) -> None:
    chat = HFChatModel(loaded, context_window=128)
    conversation = [
        {"role": "user", "content": "old question " * 20},
        {"role": "assistant", "content": "old answer " * 20},
        {"role": "user", "content": "new question"},
    ]
    ids, notices, _ = chat.build_prompt(conversation, "", 32)
    text = chat.tokenizer.decode(ids)
    assert "old question" not in text and "new question" in text
    assert any("Older messages were left out" in n for n in notices)


def test_two_sessions_at_once_get_their_own_answers(loaded) -> None:
    chat = HFChatModel(loaded)
    questions = ["What is the capital of France?", "The quick brown fox"]
    expected = {q: chat.stream_chat(ask(q), GREEDY).read().text for q in questions}
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(question: str) -> None:
        try:
            results[question] = chat.stream_chat(ask(question), GREEDY).read().text
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(q,)) for q in questions * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert results == expected


def test_closing_a_stream_early_stops_generation_and_frees_the_model(loaded) -> None:
    chat = HFChatModel(loaded)
    stream = chat.stream_chat(ask("hi"), SamplingParams(0.0, 0.9, 200))
    next(iter(stream))
    stream.close()
    assert stream.answer is not None and stream.answer.timings.new_tokens < 200
    assert not chat._lock.locked()
    assert chat.stream_chat(ask("hi"), GREEDY).read().timings.new_tokens >= 1


@pytest.mark.parametrize("where", ["_forward", "step"])  # reading the prompt, or a later token
def test_an_error_while_generating_reaches_the_reader(
    chat: HFChatModel, monkeypatch, where: str
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    target = decode if where == "_forward" else decode.Batch
    monkeypatch.setattr(target, where, broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # a bug stays visible as a bug
        chat.stream_chat(ask("hi"), GREEDY).read()
    monkeypatch.undo()
    assert chat.stream_chat(ask("hi"), GREEDY).read().timings.new_tokens >= 1  # still serving


def test_running_out_of_memory_is_explained(chat: HFChatModel, monkeypatch) -> None:
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(decode, "_forward", exhausted)
    with pytest.raises(GenerationError, match=r"ran out of memory.*Longest answer"):
        chat.stream_chat(ask("hi"), GREEDY).read()
    monkeypatch.undo()
    assert chat.stream_chat(ask("hi"), GREEDY).read().timings.new_tokens >= 1  # still serving


def test_chat_stream_times_pieces_it_is_given() -> None:
    def slow_pieces():
        time.sleep(0.05)
        yield "a "
        yield ""
        yield "b"

    answer = ChatStream(slow_pieces(), prompt_tokens=3).read()
    assert answer.text == "a b"
    assert answer.timings.new_tokens == 2
    assert answer.timings.time_to_first_token_s >= 0.05


def test_tokens_per_second_counts_decoding_after_the_first_token() -> None:
    timings = Timings(prompt_tokens=10, new_tokens=11, time_to_first_token_s=0.5, total_s=1.5)
    assert timings.tokens_per_s == pytest.approx(10.0)
    assert "11 tokens" in timings.summary()
    assert Timings(1, 1, 0.2, 0.2).tokens_per_s == pytest.approx(5.0)


def test_reading_a_finished_stream_again_returns_its_answer_at_once(chat: HFChatModel) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stream = chat.stream_chat(ask("Paris?"), GREEDY)
    first = stream.read()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        again = pool.submit(stream.read).result(timeout=10)  # used to wait forever
    finally:
        pool.shutdown(wait=False)  # a reader stuck in the old way must not hang the suite
    assert again is first and list(stream) == []
