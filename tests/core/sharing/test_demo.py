"""Demo mode: a bundle presented read-only, and plain words when its bundle or model is missing."""

from __future__ import annotations

import pytest

from core.answering import conversations
from core.errors import ModelNotAvailableError, ReadOnlyError
from core.evaluation import runner
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.retrieve import search
from core.knowledge.store import KnowledgeStore
from core.sharing import demo as sharing_demo
from core.sharing import importing
from core.sharing.bundle import BundleError
from core.training import adapters, jobs
from tests.support.sharing import (
    QUESTIONS,
    everything_under,
    export_studio,
    rebuilt,
)


def test_demo_mode_presents_the_bundle_and_core_refuses_every_change(
    settings, knowledge, studio, tmp_path, fake_embeddings
) -> None:
    bundle = export_studio(settings, knowledge, studio, tmp_path / "demo.zip")
    host = settings.model_copy(
        update={"data_dir": tmp_path / "host", "demo_bundle": bundle, "system_prompt": "Other."}
    )
    demo = sharing_demo.open_demo(host)
    assert demo.read_only and demo.data_dir.is_relative_to(host.data_dir)
    assert demo.system_prompt == settings.system_prompt  # the bundle's answer settings
    assert demo.models_dir == host.models_dir  # prepared models are shared, not copied
    store = KnowledgeStore(demo, fake_embeddings)
    kb = store.open("Harbour")
    assert search(kb, QUESTIONS[0]).passages  # reading works
    (adapter,) = adapters.list_adapters(demo)
    assert len(runner.list_reports(demo)) == 1
    assert sharing_demo.open_demo(host).data_dir == demo.data_dir  # unpacked once, reused

    refused = [
        lambda: store.create("New"),
        lambda: store.delete("Harbour"),
        lambda: store.rename("Harbour", "Other"),
        lambda: kb.delete_document(kb.documents()[0].doc_id),
        lambda: list(ingest(kb, [UploadedFile("x.txt", b"new text")], ChunkSettings())),
        lambda: jobs.start(demo, None, None),  # type: ignore[arg-type]
        lambda: jobs.delete_run(demo, adapter.run_id),
        lambda: jobs.cancel(demo, adapter.run_id),
        lambda: adapters.rename(demo, adapter.run_id, "Mine"),
        lambda: adapters.delete(demo, adapter.run_id),
        lambda: runner.delete(demo, studio["report"]),
        lambda: runner.save(demo, runner.load(demo, studio["report"])),
        lambda: conversations.save(demo, conversations.Conversation()),
        lambda: importing.import_bundle(demo, store, bundle),
    ]
    before = everything_under(demo.data_dir)
    for attempt in refused:
        with pytest.raises(ReadOnlyError, match="read-only demo"):
            attempt()
    assert everything_under(demo.data_dir) == before
    assert store.names() == ["Harbour"] and len(adapters.list_adapters(demo)) == 1


def test_demo_mode_explains_a_missing_bundle_or_model(
    settings, knowledge, studio, tmp_path
) -> None:
    missing = settings.model_copy(update={"demo_bundle": tmp_path / "nowhere.zip"})
    with pytest.raises(BundleError, match="cannot be read"):
        sharing_demo.open_demo(missing)
    bundle = rebuilt(
        export_studio(settings, knowledge, studio, tmp_path / "demo.zip"),
        tmp_path / "offline.zip",
        lambda manifest, members: manifest.update(base_model="org/not-on-this-machine"),
    )
    offline = settings.model_copy(update={"demo_bundle": bundle, "offline": True})
    with pytest.raises(ModelNotAvailableError, match="not on this machine"):
        sharing_demo.open_demo(offline)
