"""The tiny model with a trained adapter, shared by the decoding and engine tests."""

import pytest

from core.model.loading import load_chat_model
from core.model.local import HFChatModel
from core.training import adapters
from tests.support.training import trained


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_model_dir):
    """The tiny model in float32 (exact comparisons) with a trained adapter attached."""
    from core.settings import Settings

    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("decode"),
        base_model=str(tiny_model_dir),
        dtype="float32",
    )
    run_id = trained(settings, "Tuned")
    chat = HFChatModel(load_chat_model(settings))
    adapters.attach(chat, settings, run_id)
    return chat, run_id, settings
