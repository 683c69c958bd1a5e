from pathlib import Path

import pytest
import torch

from core.errors import ModelNotAvailableError
from core.model import loading
from core.settings import Settings


def test_embedded_base_model_is_found_in_its_package(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)
    source = loading.describe_model(settings.base_model, settings)
    assert source.kind == "embedded"
    assert source.display_name == "SmolLM2-135M-Instruct"
    assert source.path is not None and source.path.suffix == ".gguf" and source.path.is_file()
    assert source.ready is False  # not converted yet in a fresh data folder
    assert "first use" in source.note


def test_embedded_embedding_model_is_a_ready_folder(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)
    source = loading.describe_model(settings.embedding_model, settings)
    assert source.ready and source.path is not None
    assert (source.path / "model.safetensors").exists()
    assert loading.embedding_model_path(settings) == str(source.path)


def test_unknown_embedded_name_lists_the_known_ones(settings: Settings) -> None:
    with pytest.raises(ModelNotAvailableError, match="embedded:SmolLM2-135M-Instruct"):
        loading.describe_model("embedded:gpt-5", settings)


def test_local_folder_loads_and_generates(settings: Settings, tiny_model_dir: Path) -> None:
    source = loading.describe_model(str(tiny_model_dir), settings)
    assert (source.kind, source.ready, source.path) == ("folder", True, tiny_model_dir)
    loaded = loading.load_chat_model(settings)
    assert loaded.device == "cpu"
    assert loaded.model.dtype == loading.resolve_dtype("auto", "cpu")
    assert not loaded.model.training
    ids = loaded.tokenizer("Paris", return_tensors="pt")["input_ids"]
    out = loaded.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


def test_missing_folder_says_so_and_names_the_setting(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"does not exist\. Set LRS_BASE_MODEL"):
        loading.describe_model(str(tmp_path / "no-such-model"), settings)
    settings = settings.model_copy(update={"embedding_model": str(tmp_path / "no-such-embedder")})
    with pytest.raises(ModelNotAvailableError, match="Set LRS_EMBEDDING_MODEL"):
        loading.describe_model(settings.embedding_model, settings)


def test_folder_without_a_model_says_what_is_missing(settings: Settings, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotAvailableError, match=r"no model \(no config.json\)"):
        loading.describe_model(str(empty), settings)


def test_pickled_weights_are_refused(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotAvailableError, match="only safetensors"):
        loading.describe_model(str(folder), settings)


def test_hub_id_offline_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, offline=True, base_model="someone/not-downloaded-model"
    )
    with pytest.raises(ModelNotAvailableError, match="set to work offline") as caught:
        loading.load_chat_model(settings)
    assert "hf download someone/not-downloaded-model" in str(caught.value)
    assert "LRS_BASE_MODEL" in str(caught.value)


def test_hub_id_without_a_reachable_hub_fails_fast_and_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    settings = Settings(_env_file=None, data_dir=tmp_path, base_model="someone/not-downloaded")
    source = loading.describe_model(settings.base_model, settings)
    assert (source.kind, source.ready) == ("hub", False)
    with pytest.raises(ModelNotAvailableError, match="Hub cannot be reached"):
        loading.load_chat_model(settings)


def test_hub_id_in_the_local_cache_is_used(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "_hub_cached_snapshot", lambda repo_id: tiny_model_dir)
    settings = Settings(_env_file=None, data_dir=tmp_path, base_model="someone/tiny-llama")
    source = loading.describe_model(settings.base_model, settings)
    assert (source.kind, source.ready, source.path) == ("hub", True, tiny_model_dir)
    assert loading.load_chat_model(settings).name == "someone/tiny-llama"


def test_a_malformed_id_is_neither_folder_nor_hub_id(settings: Settings) -> None:
    with pytest.raises(ModelNotAvailableError, match="neither a folder"):
        loading.describe_model("not a model id!", settings)


def test_dtype_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert loading.resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert loading.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert loading.resolve_dtype("float32", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert loading.resolve_dtype("auto", "cuda") == torch.float16


def test_the_dtype_setting_is_applied(settings: Settings) -> None:
    loaded = loading.load_chat_model(settings.model_copy(update={"dtype": "bfloat16"}))
    assert loaded.model.dtype == torch.bfloat16


def test_device_auto_uses_cuda_only_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loading.resolve_device("auto") == "cuda"
    assert loading.resolve_device("cpu") == "cpu"
    assert loading.describe_device("cpu").startswith("CPU (")


@pytest.mark.slow
def test_embedded_default_converts_once_and_answers(real_data_dir: Path) -> None:
    from core.model.chat import SamplingParams
    from core.model.local import HFChatModel

    settings = Settings(_env_file=None, data_dir=real_data_dir)
    steps: list[float] = []
    loaded = loading.load_chat_model(settings, progress=lambda f, _m: steps.append(f))
    assert steps == sorted(steps) and steps[-1] == 1.0

    source = loading.describe_model(settings.base_model, settings)
    assert source.ready
    assert source.path is not None
    converted = loading.converted_model_dir(settings, source.path)
    assert (converted / "model.safetensors").exists()
    assert "quantization_config" not in (converted / "config.json").read_text()

    chat = HFChatModel(loaded)
    answer = chat.stream_chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0.0, max_new_tokens=32),
        settings.system_prompt,
    ).read()
    assert "Paris" in answer.text
