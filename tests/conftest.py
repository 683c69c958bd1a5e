"""Shared fixtures: isolated settings, a tiny random Llama on disk, a fake chat model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from core.settings import Settings
from tests.support.fakes import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer Llama with a ChatML tokenizer, saved as safetensors."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", base_model=str(tiny_model_dir))


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for every test that uses the real default models: the model is converted
    once per test session, as it is once per installation."""
    return tmp_path_factory.mktemp("real-data")


@pytest.fixture(scope="session")
def fresh_real_data_dir(real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Makes empty data folders that share the prepared default model with `real_data_dir`, for
    tests that add knowledge bases or adapters (other tests expect an empty studio there)."""
    from core.model.loading import prepare_model

    def make() -> Path:
        shared = Settings(_env_file=None, data_dir=real_data_dir)
        prepare_model(shared.base_model, shared)
        folder = tmp_path_factory.mktemp("real-fresh")
        (folder / "models").symlink_to(real_data_dir / "models", target_is_directory=True)
        return folder

    return make


@pytest.fixture(scope="session")
def real_persona_run(real_data_dir: Path) -> Path:
    """The example persona trained with the Balanced preset on the real default model, started the
    Fine-tune page's way (its worker process), in `real_data_dir`: trained once per test session
    and copied by the tests that need a real adapter (tests.support.training.copy_run)."""
    from core.training import jobs
    from core.training.config import PRESETS
    from core.training.datasets import parse_dataset
    from tests.support.training import EXAMPLE_PERSONA, finished, wait_for

    settings = Settings(_env_file=None, data_dir=real_data_dir)
    run = jobs.start(
        settings,
        parse_dataset(EXAMPLE_PERSONA.name, EXAMPLE_PERSONA.read_bytes()),
        PRESETS["balanced"].config,
        name="Captain Lumen",
        preset="balanced",
        system_prompt=settings.system_prompt,
    )
    wait_for(run.folder, finished, timeout=600)
    return run.folder


@pytest.fixture
def fake_embeddings():  # type: ignore[no-untyped-def]
    """Deterministic vectors from a hash of the text: fast, and the same text always matches."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    return DeterministicFakeEmbedding(size=32)


@pytest.fixture
def knowledge(settings: Settings, fake_embeddings):  # type: ignore[no-untyped-def]
    from core.knowledge.store import KnowledgeStore

    return KnowledgeStore(settings, fake_embeddings)


@pytest.fixture
def stop_runs(settings: Settings):  # type: ignore[no-untyped-def]
    """Kills the training workers a test left running."""
    import contextlib
    import os
    import signal

    from core.training import jobs, run_folder

    yield
    for run in jobs.all_runs(settings):
        pid = run_folder.read_status(run.folder).get("pid")
        if run.active and pid and pid != os.getpid():  # in-process runs have our own pid
            # The worker's whole session: under torchrun, the launcher and every process.
            # Workers start in a session of their own: never our own group.
            with contextlib.suppress(ProcessLookupError):
                if (group := os.getpgid(pid)) != os.getpgid(0):
                    os.killpg(group, signal.SIGKILL)
