"""AppTest helpers: every page runs through app.py, with settings isolated in tmp_path."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.support.fakes import FakeChatModel
from views.support import access, resources

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def texts(elements) -> str:  # type: ignore[no-untyped-def]
    """The elements' texts as a reader sees them: the escapes of
    views.support.widgets.markdown_escape undone."""
    return re.sub(r"\\(.)", r"\1", " ".join(str(e.value) for e in elements))


@pytest.fixture
def studio_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("LRS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LRS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LRS_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setattr(access, "_failures", {})  # wrong passwords of earlier tests
    st.cache_resource.clear()
    yield tmp_path
    st.cache_resource.clear()


@pytest.fixture
def open_page(studio_env: Path) -> Callable[[str | None], AppTest]:
    def _open(page: str | None = None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        if page is not None:
            at.switch_page(page)
            at.run()
        return at

    return _open


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch, studio_env: Path) -> FakeChatModel:
    fake = FakeChatModel(["The capital of France is Paris.", "Berlin is the capital of Germany."])
    monkeypatch.setattr(resources, "build_chat_model", lambda settings: fake)
    return fake


@pytest.fixture
def fake_search(monkeypatch: pytest.MonkeyPatch, studio_env: Path, fake_embeddings):
    """The knowledge base page with deterministic fake embeddings instead of MiniLM."""
    monkeypatch.setattr(resources.loading, "load_embeddings", lambda settings: fake_embeddings)
    return fake_embeddings
