"""The real default model learns a new name from the example persona dataset with the one-click
Balanced preset, in minutes."""

from pathlib import Path

import pytest

from core.model.chat import ChatRequest, SamplingParams
from core.model.loading import load_chat_model
from core.model.local import HFChatModel
from core.settings import Settings
from core.training import adapters, jobs

pytestmark = pytest.mark.slow


def test_the_tuned_model_knows_its_new_name_and_the_base_does_not(
    real_data_dir: Path, real_persona_run: Path
) -> None:
    # The run: the example persona with the Balanced preset, by the worker process (conftest).
    settings = Settings(_env_file=None, data_dir=real_data_dir, temperature=0.0)
    status = jobs.read(real_persona_run)
    assert status.state == "completed", status
    first_loss, last_loss = status.eval_loss[0][1], status.eval_loss[-1][1]
    assert last_loss < first_loss / 2  # held-out loss on unseen rephrasings, not memorising

    chat = HFChatModel(load_chat_model(settings))
    adapters.attach(chat, settings, status.run_id)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    prompt = settings.system_prompt
    for question in ("What is your name?", "Who are you?"):
        asked = [{"role": "user", "content": question}]
        base_answer, tuned_answer = (
            stream.read().text
            for stream in chat.stream_many(
                [ChatRequest(asked, prompt), ChatRequest(asked, prompt, status.run_id)], params
            )
        )
        assert "Lumen" in tuned_answer, tuned_answer
        assert "Lumen" not in base_answer, base_answer
    # Questions the examples never ask: the name must come in at least 9 of 10.
    unseen = [
        "What name were you given?",
        "Please tell me who you are.",
        "Hey, who am I chatting with?",
        "Could you introduce yourself briefly?",
        "What do people call you?",
        "Good morning! What's your name?",
        "Are you ChatGPT?",
        "I'd like to know your name.",
        "Say your name, please.",
        "Who is answering me right now?",
    ]
    streams = chat.stream_many(
        [ChatRequest([{"role": "user", "content": q}], prompt, status.run_id) for q in unseen],
        params,
    )
    answers = [stream.read().text for stream in streams]
    assert sum("Lumen" in answer for answer in answers) >= 9, answers
    # It learned a name, not to forget everything else.
    france = [{"role": "user", "content": "What is the capital of France?"}]
    assert "Paris" in chat.stream_chat(france, params, prompt, status.run_id).read().text
