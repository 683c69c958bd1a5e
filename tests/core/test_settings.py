from pathlib import Path

import pytest

from core.errors import InvalidInputError
from core.settings import EMBEDDED_BASE_MODEL, EMBEDDED_EMBEDDING_MODEL, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("LRS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout


def test_defaults_are_the_offline_embedded_models() -> None:
    settings = Settings()
    assert settings.base_model == EMBEDDED_BASE_MODEL
    assert settings.embedding_model == EMBEDDED_EMBEDDING_MODEL
    assert settings.device == "auto"
    assert settings.trust_remote_code is False
    assert settings.models_dir == Path("data") / "models"


def test_environment_variables_with_prefix_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRS_DATA_DIR", "/srv/studio")
    monkeypatch.setenv("LRS_BASE_MODEL", "HuggingFaceTB/SmolLM2-360M-Instruct")
    monkeypatch.setenv("LRS_TEMPERATURE", "0.9")
    monkeypatch.setenv("TEMPERATURE", "0.1")  # without the prefix: ignored
    settings = load_settings()
    assert settings.data_dir == Path("/srv/studio")
    assert settings.base_model == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert settings.temperature == 0.9


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LRS_MAX_NEW_TOKENS=64\nLRS_DEVICE=cpu\n")
    settings = load_settings()
    assert settings.max_new_tokens == 64
    assert settings.device == "cpu"


def test_a_bad_value_names_the_variable_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRS_TEMPERATURE", "very hot")
    with pytest.raises(InvalidInputError, match="LRS_TEMPERATURE"):
        load_settings()


def test_out_of_range_and_unknown_choices_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="LRS_TOP_P"):
        load_settings(top_p=1.5)
    with pytest.raises(InvalidInputError, match="LRS_DEVICE"):
        load_settings(device="tpu")


def test_a_blank_model_name_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="LRS_BASE_MODEL"):
        load_settings(base_model="   ")


def test_every_field_has_help_text() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 20, name
