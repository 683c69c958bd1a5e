"""Importing a demo: new names or replacing, and nothing left behind by an import that fails."""

from __future__ import annotations

import pytest

from core.answering import conversations
from core.evaluation import runner
from core.knowledge.chroma import studio_id
from core.knowledge.retrieve import search
from core.knowledge.store import KnowledgeStore
from core.sharing import importing
from core.sharing.bundle import BundleError, read_bundle
from core.training import adapters
from tests.support.sharing import (
    QUESTIONS,
    everything_under,
    export_studio,
    other_studio,
)


def test_a_second_import_gets_new_names_unless_the_user_replaces(
    settings, knowledge, studio, tmp_path
) -> None:
    bundle = export_studio(settings, knowledge, studio, tmp_path / "demo.zip")
    plan = importing.plan_import(settings, read_bundle(bundle.read_bytes(), 10**9))
    assert plan.conflicts == ["knowledge base 'Harbour'", "adapter 'Harbour voice'"]
    assert plan.knowledge_bases == {"Harbour": "Harbour - imported"}

    importing.import_bundle(settings, knowledge, bundle)
    assert knowledge.names() == ["Harbour", "Harbour - imported"]
    names = sorted(a.name for a in adapters.list_adapters(settings))
    assert names == ["Harbour voice", "Harbour voice - imported"]
    assert len(runner.list_reports(settings)) == 2  # the copy got an id of its own

    first_kb = knowledge.open("Harbour").passage_count()
    importing.import_bundle(settings, knowledge, bundle, replace=True)
    assert knowledge.names() == ["Harbour", "Harbour - imported"]
    assert knowledge.open("Harbour").passage_count() == first_kb
    assert search(knowledge.open("Harbour"), QUESTIONS[0]).passages
    names = sorted(a.name for a in adapters.list_adapters(settings))
    assert names == ["Harbour voice", "Harbour voice - imported"]
    assert len(runner.list_reports(settings)) == 2


def test_a_failed_import_leaves_nothing_behind(
    settings, knowledge, studio, tmp_path, fake_embeddings, monkeypatch
) -> None:
    bundle = export_studio(settings, knowledge, studio, tmp_path / "demo.zip")
    elsewhere, store = other_studio(settings, tmp_path, fake_embeddings)
    store.names()  # the empty studio, as it is before the import
    studio_id(elsewhere)  # with its identity, made at its first knowledge base
    before = everything_under(elsewhere.data_dir)

    def disk_full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(importing, "_import_adapter", disk_full)
    with pytest.raises(BundleError, match="nothing was kept"):
        importing.import_bundle(elsewhere, store, bundle)
    assert store.names() == [] and adapters.list_adapters(elsewhere) == []
    assert runner.list_reports(elsewhere) == []
    left = [p for p in everything_under(elsewhere.data_dir) if not p.startswith("chroma/")]
    assert left == [p for p in before if not p.startswith("chroma/")]
    assert store.names() == []


def test_a_replacing_import_that_fails_keeps_what_was_there(
    settings, knowledge, studio, tmp_path, monkeypatch
) -> None:
    bundle = export_studio(settings, knowledge, studio, tmp_path / "demo.zip")
    conversation_file = (
        conversations.arena_dir(settings) / "conversations" / f"{studio['conversation']}.json"
    )
    kept_conversation = conversation_file.read_bytes()
    passages = knowledge.open("Harbour").passage_count()
    real_rename = KnowledgeStore.rename

    def rename_fails_when_the_new_one_moves_in(self, old, new):  # type: ignore[no-untyped-def]
        if old.startswith("import-"):
            raise OSError(28, "No space left on device")
        return real_rename(self, old, new)

    monkeypatch.setattr(KnowledgeStore, "rename", rename_fails_when_the_new_one_moves_in)
    with pytest.raises(BundleError, match="nothing was kept"):
        importing.import_bundle(settings, knowledge, bundle, replace=True)
    assert knowledge.names() == ["Harbour"]
    assert knowledge.open("Harbour").passage_count() == passages
    assert search(knowledge.open("Harbour"), QUESTIONS[0]).passages
    assert [a.run_id for a in adapters.list_adapters(settings)] == [studio["run_id"]]
    assert conversation_file.read_bytes() == kept_conversation  # overwritten, then put back
    assert [r.id for r in runner.list_reports(settings)] == [studio["report"]]
