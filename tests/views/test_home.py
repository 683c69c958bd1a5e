import pytest

from tests.support.openai_server import serving
from tests.views.conftest import texts
from views.support import resources


def test_home_explains_the_choice_and_shows_the_installation(open_page) -> None:
    at = open_page(None)
    assert not at.exception
    assert at.title[0].value == "LoRA-RAG Studio"
    subheaders = [h.value for h in at.subheader]
    assert "LoRA or RAG? When each one helps" in subheaders
    text = texts(at.markdown)
    assert "Best for facts" in text and "Best for behaviour" in text and "Both" in text
    assert "tiny-llama" in text  # the configured base model (a folder in this test)
    assert "all-MiniLM-L6-v2" in text
    assert "CPU (" in text
    assert "**Answers come from** the embedded engine in this process" in text
    assert "**Knowledge bases:** 0, stored on this machine." in text
    assert "**Adapters:** 0." in text
    assert not at.error


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("someone/not-downloaded-model", "set to work offline"),
        ("/nowhere/model", "does not exist"),
    ],
)
def test_home_says_plainly_when_the_model_is_unavailable(
    open_page, monkeypatch, model: str, message: str
) -> None:
    monkeypatch.setenv("LRS_BASE_MODEL", model)
    monkeypatch.setenv("LRS_OFFLINE", "true")
    at = open_page(None)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value
    assert "Traceback" not in at.error[0].value


def test_a_bad_setting_stops_with_a_message_not_a_traceback(open_page, monkeypatch) -> None:
    monkeypatch.setenv("LRS_TEMPERATURE", "hot")
    at = open_page(None)
    assert not at.exception
    assert "LRS_TEMPERATURE" in texts(at.error)


def test_sidebar_names_the_model(open_page) -> None:
    at = open_page(None)
    assert "tiny-llama" in texts(at.sidebar.caption)


def test_home_names_the_serving_engine_and_says_plainly_when_it_is_down(
    open_page, monkeypatch
) -> None:
    with serving() as (url, _):
        monkeypatch.setenv("LRS_ENGINE_URL", url)
        at = open_page(None)
        assert not at.exception
        assert f"**Answers come from** the server at `{url}`, serving served-base" in texts(
            at.markdown
        )
    resources._engine_text.clear()  # as if its 10 s had passed
    at = open_page(None)  # the server has stopped; the page still opens, and says so
    assert not at.exception
    assert "cannot be reached: start it, or check LRS_ENGINE_URL" in texts(at.markdown)


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ("auto", "weights: int8 for answers (about twice as fast"),  # a folder of bf16 weights
        ("full", "weights: bfloat16"),
    ],
)
def test_home_says_how_answers_read_the_weights(
    open_page, monkeypatch, setting: str, shown: str
) -> None:
    monkeypatch.setenv("LRS_DTYPE", "bfloat16")
    monkeypatch.setenv("LRS_DECODE_WEIGHTS", setting)
    monkeypatch.setattr(resources, "_decoding", {})
    at = open_page(None)
    text = texts(at.markdown)
    assert shown in text
    assert ("for fine-tuning" in text) == (setting == "auto")


def test_the_embedded_model_is_described_as_read_in_its_own_four_bits(monkeypatch) -> None:
    from core.settings import Settings

    settings = Settings(_env_file=None, dtype="bfloat16", device="cpu")
    monkeypatch.setattr(resources, "_decoding", {})
    assert resources.weights_text(settings).startswith(
        "int4 for answers (as the model file stores them)"
    )
