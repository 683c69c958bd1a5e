"""Answers from a serving engine (LRS_ENGINE_URL): every mode a request, adapters registered by
name, and one plain sentence for each way the server can fail."""

from __future__ import annotations

from dataclasses import replace

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from pydantic import SecretStr

from core.answering import round as question_round
from core.answering.modes import MODES
from core.errors import GenerationError, ModelNotAvailableError
from core.knowledge.store import KnowledgeStore
from core.model import loading, loops
from core.model.chat import ChatRequest, Favour, SamplingParams
from core.model.remote import RemoteChatModel, server_status
from core.settings import Settings
from core.training import adapters
from tests.support.openai_server import Behaviour, serving
from tests.support.training import trained

PARAMS = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=16)
ASK = [{"role": "user", "content": "What is the release code?"}]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_model_dir):
    """A studio folder with a trained adapter, and the base model's tokenizer."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path_factory.mktemp("remote"), base_model=str(tiny_model_dir)
    )
    return settings, trained(settings, "Harbour voice"), loading.load_tokenizer(settings)


def remote(studio, url: str, **settings_update) -> RemoteChatModel:
    settings, _, tokenizer = studio
    update = {"engine_url": url, **settings_update}
    if "engine_api_key" in update:
        update["engine_api_key"] = SecretStr(update["engine_api_key"])
    return RemoteChatModel(settings.model_copy(update=update), tokenizer)


def test_every_mode_answers_from_the_server_with_the_adapter_and_the_exact_prompt(studio) -> None:
    settings, run_id, tokenizer = studio
    with serving() as (url, server):
        chat = remote(studio, url)
        adapter = adapters.attach(chat, settings, run_id)
        assert server.adapters == {run_id: str(adapters.get(settings, run_id).folder)}
        kb = KnowledgeStore(settings, DeterministicFakeEmbedding(size=32)).create("Handbook")
        asked = question_round.prepare(
            "What is the release code?",
            list(MODES),
            system_prompt="Be brief.",
            adapter=adapter,
            kb=kb,
        )
        question_round.start(chat, [asked], PARAMS)
        exchange = question_round.finish(asked, question_round.read_all(asked))
    assert all(not answer.error for answer in exchange.answers.values()), exchange.answers
    models = {body["model"] for body in server.received}
    assert models == {"served-base", run_id}  # each mode names the base model or the adapter
    for key, answer in exchange.answers.items():
        model = run_id if MODES[key].uses_adapter else "served-base"
        # What the Prompt view shows is what the server read, token for token.
        body = next(
            b
            for b in server.received
            if b["model"] == model and tokenizer.decode(b["prompt"]) == answer.prompt
        )
        assert answer.text.startswith(f"{model}:{len(body['prompt'])}:0")
        assert answer.new_tokens == 6 and answer.prompt_tokens == len(body["prompt"])


def test_the_servers_context_window_bounds_the_prompt(studio) -> None:
    with serving(Behaviour(max_model_len=128)) as (url, server):
        chat = remote(studio, url)
        answer = chat.stream_chat([{"role": "user", "content": "word " * 400}], PARAMS).read()
    assert chat.context_window == 128
    assert len(server.received[0]["prompt"]) + 16 <= 128
    assert any("too long" in notice for notice in answer.notices)


def test_an_adapter_the_server_forgot_is_registered_again(studio) -> None:
    settings, run_id, _ = studio
    with serving() as (url, server):
        chat = remote(studio, url)
        adapters.attach(chat, settings, run_id)
        server.adapters.clear()  # the server was restarted
        answer = chat.stream_chat(ASK, PARAMS, adapter=run_id).read()
    assert answer.text.startswith(run_id) and run_id in server.adapters


def test_the_adapter_folder_is_named_as_the_server_sees_it(studio) -> None:
    settings, run_id, _ = studio
    with serving() as (url, server):
        chat = remote(studio, url, engine_data_dir="/srv/studio-data")
        adapters.attach(chat, settings, run_id)
    relative = adapters.get(settings, run_id).folder.relative_to(settings.data_dir)
    assert server.adapters[run_id] == f"/srv/studio-data/{relative.as_posix()}"


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (Behaviour(garbage=True), r"sent something that is not an answer.*/v1"),
        (Behaviour(stop_after=2), r"stopped in the middle of the answer"),
        (Behaviour(api_key="right"), r"refused the studio's key: check LRS_ENGINE_API_KEY"),
        (Behaviour(delay_s=3), r"did not answer within 1 s.*LRS_ENGINE_TIMEOUT_S"),
    ],
    ids=["garbage", "stopped", "key", "slow"],
)
def test_a_failing_server_gives_one_plain_sentence(studio, behaviour, expected) -> None:
    with serving(behaviour) as (url, _):
        chat = remote(studio, url, engine_timeout_s=1.0, engine_api_key="wrong")
        with pytest.raises(GenerationError, match=expected):
            if behaviour.api_key:
                chat.check()
            chat._served = "served-base"
            chat.stream_chat(ASK, PARAMS).read()
        behaviour.garbage, behaviour.stop_after, behaviour.delay_s = False, None, 0.0
        behaviour.api_key = None
        assert (
            chat.stream_chat(ASK, PARAMS).read().timings.new_tokens == 6
        )  # the next question works


def test_a_server_that_is_down_or_serves_another_model_is_named_plainly(studio) -> None:
    with serving() as (url, _):
        wrong = remote(studio, url, engine_model="Llama-70B")
        with pytest.raises(
            GenerationError, match=r"does not serve the model 'Llama-70B'.*served-base"
        ):
            wrong.stream_chat(ASK, PARAMS)
    down = remote(studio, url)  # the server is gone now
    with pytest.raises(
        GenerationError, match="cannot be reached: start it, or check LRS_ENGINE_URL"
    ):
        down.stream_chat(ASK, PARAMS)
    assert "cannot be reached" in server_status(down.settings)


def test_a_server_without_runtime_adapters_says_which_flags_it_needs(studio) -> None:
    settings, run_id, _ = studio
    with serving(Behaviour(lora=False)) as (url, _):
        chat = remote(studio, url)
        with pytest.raises(ModelNotAvailableError, match=r"--enable-lora.*RUNTIME_LORA_UPDATING"):
            adapters.attach(chat, settings, run_id)
        assert server_status(chat.settings).startswith(f"the server at {url}, serving served-base")


def test_an_adapter_larger_than_the_servers_rank_says_which_flag_to_raise(studio) -> None:
    settings, run_id, _ = studio
    with serving(Behaviour(max_lora_rank=4)) as (url, server):
        chat = remote(studio, url)
        with pytest.raises(
            ModelNotAvailableError,
            match=r"'Harbour voice' has rank 8, and the answer engine takes adapters up to rank "
            r"4: restart vLLM with --max-lora-rank 8",
        ):
            adapters.attach(chat, settings, run_id)
        assert server.adapters == {}
        assert chat.stream_chat(ASK, PARAMS).read().timings.new_tokens == 6  # the base still works


def test_closing_a_stream_early_hangs_up_on_the_server(studio) -> None:
    with serving(Behaviour(words=400, pace_s=0.02)) as (url, server):
        chat = remote(studio, url)
        stream = chat.stream_chat(ASK, SamplingParams(0.0, 1.0, 1000))
        next(iter(stream))
        stream.close()
        assert server.disconnected.wait(10)
    assert stream.answer is not None and stream.answer.timings.new_tokens < 400


def test_the_key_is_never_shown(studio) -> None:
    with serving(Behaviour(api_key="s3cret-key")) as (url, _):
        chat = remote(studio, url, engine_api_key="s3cret-key")
        assert chat.stream_chat(ASK, PARAMS).read().timings.new_tokens == 6
    assert "s3cret-key" not in repr(chat.settings) and "s3cret-key" not in str(chat.settings)


def test_a_repetition_penalty_is_sent_only_when_the_user_chose_one(studio) -> None:
    with serving() as (url, server):
        chat = remote(studio, url)
        chat.stream_chat(ASK, PARAMS).read()
        chat.stream_chat(ASK, replace(PARAMS, repetition_penalty=1.2)).read()
    first, second = server.received
    assert "repetition_penalty" not in first  # the server applies the model's own
    assert second["repetition_penalty"] == 1.2


def test_favoured_text_is_sent_as_a_logit_bias_on_its_tokens(studio) -> None:
    _, _, tokenizer = studio
    favour = Favour("The code is BLUE-42.", 2.0)
    with serving() as (url, server):
        chat = remote(studio, url)
        chat.stream_many([ChatRequest(ASK, favour=favour)], PARAMS)[0].read()
        chat.stream_chat(ASK, PARAMS).read()
    favoured, plain = server.received
    expected = set(tokenizer.encode(favour.text)) | set(tokenizer.encode(f" {favour.text}"))
    assert {int(t) for t in favoured["logit_bias"]} == expected
    assert set(favoured["logit_bias"].values()) == {2}
    assert not plain.get("logit_bias")


def test_an_answer_that_loops_is_stopped_and_marked(studio) -> None:
    behaviour = Behaviour(words=400, pace_s=0.01, chunk_text=", die für die Bahn")
    with serving(behaviour) as (url, server):
        answer = remote(studio, url).stream_chat(ASK, replace(PARAMS, max_new_tokens=400)).read()
        assert server.disconnected.wait(timeout=30)  # the studio stopped reading
    assert answer.looped
    assert answer.text == ", die für die Bahn …"  # once round, then the mark
    assert answer.notices[-1] == loops.NOTICE
