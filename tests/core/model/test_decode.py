"""Batched generation: several conversations, one model, a different adapter (or none) per row."""

import threading

import pytest

from core.model import decode, fast_paths
from core.model.chat import ChatRequest, SamplingParams
from core.training import jobs
from core.training.config import TrainConfig
from core.training.datasets import parse_dataset
from tests.support.training import alpaca_rows, finished, wait_for

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)
SHORT = [{"role": "user", "content": "What is the capital of France?"}]
LONG = [
    {
        "role": "user",
        "content": "Passages: The quick brown fox jumps over the lazy dog. " * 6
        + "Question: what jumps?",
    }
]


def four_ways(run_id: str) -> list[ChatRequest]:
    return [
        ChatRequest(SHORT, "Be brief."),
        ChatRequest(SHORT, "Be brief.", run_id),
        ChatRequest(LONG, "Be brief."),
        ChatRequest(LONG, "Be brief.", run_id),
    ]


def test_four_answers_in_one_batch_match_each_answer_alone(tuned) -> None:
    chat, run_id, _ = tuned
    requests = four_ways(run_id)
    together = [stream.read() for stream in chat.stream_many(requests, GREEDY)]
    alone = [
        chat.stream_chat(r.messages, GREEDY, r.system_prompt, r.adapter).read() for r in requests
    ]
    assert [a.text for a in together] == [a.text for a in alone]
    assert all(a.timings.new_tokens > 0 for a in together)
    assert together[0].text != together[1].text  # the adapter changes the answer
    assert together[2].text != together[3].text


def test_the_fast_adapter_path_matches_peft_mixed_batches(tuned, monkeypatch) -> None:
    chat, run_id, _ = tuned
    fast = [s.read().text for s in chat.stream_many(four_ways(run_id), GREEDY)]
    monkeypatch.setattr(fast_paths, "lora_layers", lambda peft_model, used: None)  # PEFT's path
    peft = [s.read().text for s in chat.stream_many(four_ways(run_id), GREEDY)]
    assert fast == peft


def test_rows_end_on_their_own_and_can_be_stopped_alone(tuned) -> None:
    chat, run_id, _ = tuned
    params = SamplingParams(temperature=0.0, max_new_tokens=40)
    streams = chat.stream_many(four_ways(run_id), params)
    next(iter(streams[0]))
    streams[0].close()  # the reader of one column went away
    rest = [stream.read() for stream in streams[1:]]
    assert streams[0].answer is not None and streams[0].answer.timings.new_tokens < 40
    alone = chat.stream_chat(LONG, params, "Be brief.", run_id).read()
    assert rest[2].text == alone.text  # the others were not disturbed
    assert not chat._lock.locked()


def test_two_sessions_asking_four_ways_at_once_get_their_own_answers(tuned) -> None:
    chat, run_id, _ = tuned
    expected = [s.read().text for s in chat.stream_many(four_ways(run_id), GREEDY)]
    other = [ChatRequest([{"role": "user", "content": "The quick brown fox"}], "", run_id)]
    expected_other = [s.read().text for s in chat.stream_many(other, GREEDY)]
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def session(name: str, requests: list[ChatRequest]) -> None:
        try:
            results[name] = [s.read().text for s in chat.stream_many(requests, GREEDY)]
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=session, args=(f"four-{i}", four_ways(run_id))) for i in range(2)
    ] + [threading.Thread(target=session, args=("other", other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert results == {"four-0": expected, "four-1": expected, "other": expected_other}


def test_sampling_with_a_seed_is_repeatable(tuned) -> None:
    chat, run_id, _ = tuned
    params = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=16)
    first = [s.read().text for s in chat.stream_many(four_ways(run_id), params, seed=7)]
    again = [s.read().text for s in chat.stream_many(four_ways(run_id), params, seed=7)]
    assert first == again


def test_an_adapter_not_loaded_is_refused_plainly(tuned) -> None:
    chat, _, _ = tuned
    from core.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="not loaded"):
        chat.stream_many([ChatRequest(SHORT, "", "no-such-adapter")], GREEDY)


def test_answers_arrive_while_a_training_run_is_in_progress(tuned) -> None:
    chat, run_id, settings = tuned
    busy = TrainConfig(batch_size=2, epochs=8, eval_fraction=0.05, max_length=64)
    run = jobs.start(settings, parse_dataset("facts.jsonl", alpaca_rows(200)), busy, name="Busy")
    try:
        wait_for(run.folder, lambda status: status.step > 2)
        answers = [stream.read() for stream in chat.stream_many(four_ways(run_id), GREEDY)]
        assert all(answer.timings.new_tokens > 0 for answer in answers)
        assert jobs.read(run.folder).active  # answered while the worker kept training
    finally:
        jobs.cancel(settings, run.run_id)
        wait_for(run.folder, finished, timeout=60)


def test_a_repetition_penalty_follows_transformers_rule(tiny_model_dir) -> None:
    """Greedy answers with a penalty are token for token those of transformers' `generate`
    with the same penalty (prompt tokens count as seen), and differ from answers without."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompt = [1, 17, 42, 42, 99, 7, 256, 42]

    def ours(*penalties: float) -> list[list[int]]:
        answers: list[list[int]] = [[] for _ in penalties]
        rows = [
            decode.Row(
                ids=prompt,
                max_new_tokens=24,
                emit=tokens.append,
                sampling=decode.Sampling(repetition_penalty=penalty),
            )
            for tokens, penalty in zip(answers, penalties, strict=True)
        ]
        decode.decode(model, rows, eos_ids=set())
        return answers

    with torch.inference_mode():
        reference = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=24,
            min_new_tokens=24,
            do_sample=False,
            repetition_penalty=1.5,
        )[0, len(prompt) :].tolist()
    [alone], [without] = ours(1.5), ours(1.0)
    assert alone == reference
    assert without != reference
    assert ours(1.0, 1.5) == [without, reference]  # each row of a batch its own penalty


def test_favoured_tokens_get_their_bonus_in_their_own_row_only(tiny_model_dir) -> None:
    """A row's favoured tokens are raised by its bonus at every step: a large bonus makes the
    favoured token every pick; a row without favour beside it answers as it does alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompt = [1, 17, 42, 99, 7]

    def answers(*favours: tuple[tuple[int, ...], float]) -> list[list[int]]:
        found: list[list[int]] = [[] for _ in favours]
        rows = [
            decode.Row(ids=prompt, max_new_tokens=12, emit=tokens.append, favoured=ids, bonus=bonus)
            for tokens, (ids, bonus) in zip(found, favours, strict=True)
        ]
        decode.decode(model, rows, eos_ids=set())
        return found

    [plain] = answers(((), 0.0))
    unlikely = next(t for t in range(50, 250) if t not in plain)
    assert answers(((unlikely,), 1000.0), ((), 0.0)) == [[unlikely] * 12, plain]
    assert answers(((unlikely,), 0.0)) == [plain]  # no bonus, no change


@pytest.mark.parametrize(
    ("spread", "shortcut"),
    [(6.0, True), (0.05, False)],  # a peaked distribution; one flat beyond the best candidates
)
def test_nucleus_sampling_draws_from_transformers_distribution(
    monkeypatch, spread: float, shortcut: bool
) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    monkeypatch.setattr(decode, "NUCLEUS_CANDIDATES", 64)
    logits = torch.randn(2, 1000, generator=torch.Generator().manual_seed(3)) * spread
    sampling = decode.Sampling(temperature=0.7, top_p=0.9, seed=1)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9)])
    expected = torch.softmax(warpers(None, logits.clone()), dim=-1)

    drawn: list[torch.Tensor] = []  # what each draw was weighted by, over the whole vocabulary
    multinomial = torch.multinomial

    def recording(weights, count, generator=None):  # type: ignore[no-untyped-def]
        drawn.append(weights.clone())
        return multinomial(weights, count, generator=generator)

    monkeypatch.setattr(torch, "multinomial", recording)
    tokens = decode._sampler(sampling, "cpu")(logits)
    assert len(drawn) == 1 and tokens.shape == (2,)
    weights = drawn[0]
    assert (weights.shape[-1] == 64) == shortcut  # the best candidates only, where they suffice
    if shortcut:  # back onto the vocabulary
        best = logits.topk(64, dim=-1).indices
        weights = torch.zeros_like(logits).scatter(-1, best, weights)
    got = weights / weights.sum(dim=-1, keepdim=True)
    assert torch.equal(got > 0, expected > 0)  # the same tokens can be drawn
    assert torch.allclose(got, expected, atol=1e-5)  # and as likely
    assert all(bool(got[row, token] > 0) for row, token in enumerate(tokens.tolist()))
