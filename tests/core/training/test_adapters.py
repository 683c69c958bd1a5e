"""Finished adapters: listing, renaming, deleting, zipping, compatibility, chatting with one."""

import io
import json
import zipfile

import pytest

from core.errors import InvalidInputError, ModelNotAvailableError
from core.model.chat import SamplingParams
from core.model.loading import load_chat_model
from core.model.local import HFChatModel
from core.training import adapters, run_folder
from tests.support.training import trained


def test_adapters_are_listed_renamed_and_deleted(settings) -> None:
    first, second = trained(settings, "First"), trained(settings, "Second")
    listed = adapters.list_adapters(settings)
    assert [a.name for a in listed] == ["Second", "First"]  # newest first
    info = listed[0]
    assert info.compatible and info.incompatibility == ""
    assert info.train_loss and info.eval_loss and info.final_train_loss is not None
    assert info.size_bytes > 0 and info.duration_s > 0 and info.dataset_name == "facts.jsonl"

    assert adapters.rename(settings, first, "  Capital   facts ").name == "Capital facts"
    with pytest.raises(InvalidInputError, match="name"):
        adapters.rename(settings, first, "   ")
    adapters.delete(settings, second)
    assert [a.name for a in adapters.list_adapters(settings)] == ["Capital facts"]
    with pytest.raises(InvalidInputError, match="no adapter"):
        adapters.get(settings, "../" + first)


def test_the_zip_holds_the_adapter_files_only(settings) -> None:
    run_id = trained(settings, "Zipped")
    with zipfile.ZipFile(io.BytesIO(adapters.zip_bytes(settings, run_id))) as archive:
        assert sorted(archive.namelist()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            "studio.json",
        ]
        assert json.loads(archive.read("studio.json"))["name"] == "Zipped"


def test_an_adapter_for_another_base_model_is_marked_and_refused(settings) -> None:
    run_id = trained(settings, "Elsewhere")
    other = settings.model_copy(update={"base_model": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    info = adapters.get(other, run_id)
    assert not info.compatible
    assert "not on the model the studio uses now" in info.incompatibility
    assert adapters.list_adapters(other)[0].compatible is False
    with pytest.raises(ModelNotAvailableError, match="Trained on"):
        adapters.attach(HFChatModel(load_chat_model(settings)), other, run_id)


def test_an_attached_adapter_changes_its_answers_and_leaves_the_base_alone(settings) -> None:
    run_id = trained(settings, "Tuned")
    chat = HFChatModel(load_chat_model(settings))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    before = chat.stream_chat(question, params).read()
    assert adapters.attach(chat, settings, run_id).name == "Tuned"
    base_answer = chat.stream_chat(question, params).read()
    tuned_answer = chat.stream_chat(question, params, adapter=run_id).read()
    assert base_answer.text == before.text  # the adapter is beside the weights, not in them
    assert tuned_answer.timings.new_tokens > 0
    assert tuned_answer.text != base_answer.text


def test_a_damaged_adapter_gives_a_plain_message(settings) -> None:
    run_id = trained(settings, "Damaged")
    weights = settings.data_dir / "runs" / run_id / run_folder.ADAPTER_DIR / adapters.WEIGHTS_FILE
    weights.write_bytes(b"not safetensors")
    chat = HFChatModel(load_chat_model(settings))
    with pytest.raises(ModelNotAvailableError, match="missing or damaged"):
        adapters.attach(chat, settings, run_id)
    assert chat.stream_chat([{"role": "user", "content": "hi"}], SamplingParams(0.0)).read().text
    weights.unlink()
    assert adapters.list_adapters(settings) == []  # no weights: not an adapter any more


def test_an_adapter_that_does_not_fit_the_model_is_refused_and_the_model_still_answers(
    settings,
) -> None:
    run_id = trained(settings, "Misfit")
    config = (
        settings.data_dir / "runs" / run_id / run_folder.ADAPTER_DIR / adapters.ADAPTER_CONFIG_FILE
    )
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data | {"target_modules": ["no_such_layer"]}))
    chat = HFChatModel(load_chat_model(settings))
    question = [{"role": "user", "content": "hi"}]
    before = chat.stream_chat(question, SamplingParams(0.0)).read().text
    with pytest.raises(ModelNotAvailableError, match="'Misfit' could not be loaded"):
        adapters.attach(chat, settings, run_id)
    assert chat.stream_chat(question, SamplingParams(0.0)).read().text == before
