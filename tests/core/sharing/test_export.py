"""Exporting a demo: what a bundle carries comes back the same elsewhere."""

from __future__ import annotations

from core.answering import conversations
from core.evaluation import runner
from core.knowledge.retrieve import search
from core.model import loading
from core.sharing import importing
from core.sharing.bundle import FORMAT_VERSION, read_bundle
from core.training import adapters, jobs
from tests.support.sharing import (
    HANDBOOK,
    QUESTIONS,
    RULES,
    export_studio,
    other_studio,
    weights_hash,
)


def test_round_trip_gives_the_same_retrieval_and_the_same_adapter_weights(
    settings, knowledge, studio, tmp_path, fake_embeddings
) -> None:
    bundle = export_studio(settings, knowledge, studio, tmp_path / "demo.zip")
    elsewhere, store = other_studio(settings, tmp_path, fake_embeddings)
    result = importing.import_bundle(elsewhere, store, bundle)
    assert result.knowledge_bases == ["Harbour"] and result.adapters == ["Harbour voice"]

    before, after = knowledge.open("Harbour"), store.open("Harbour")
    assert [d.name for d in after.documents()] == ["handbook.txt", "rules.md"]
    assert after.passage_count() == before.passage_count() > 2
    for question in QUESTIONS:
        mine, theirs = search(before, question), search(after, question)
        assert [(p.text, p.source, p.score) for p in mine.passages] == [
            (p.text, p.source, p.score) for p in theirs.passages
        ]
    for record in after.documents():  # the originals came along, under their content hash
        assert after.original_path(record).read_bytes() in (HANDBOOK, RULES)

    (imported,) = adapters.list_adapters(elsewhere)
    original = adapters.get(settings, studio["run_id"])
    assert weights_hash(imported.folder) == weights_hash(original.folder)
    assert imported.base_model == original.base_model and imported.compatible
    assert jobs.active_run(elsewhere) is None  # an imported adapter is a finished run

    (report,) = runner.list_reports(elsewhere)
    assert report.adapter == imported.run_id and report.knowledge_base == "Harbour"
    assert runner.status(report) == "completed" and report.results[0].correct("rag")
    conversation = conversations.load(elsewhere, studio["conversation"])
    assert conversation.adapter == imported.run_id
    assert conversation.exchanges[0].answers["rag"].text == "BLUE-HARBOR-42"

    checked = read_bundle(bundle.read_bytes(), 10**9)
    manifest = checked.manifest
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.base_model == loading.shared_name(settings.base_model)
    assert manifest.embedding_model == loading.shared_name(settings.embedding_model)
    assert manifest.settings["system_prompt"] == settings.system_prompt
    # No member says where the models or the data lie on the maker's machine.
    for folder in {settings.base_model, str(settings.data_dir)} - {""}:
        if "/" in folder:
            for name, data in checked.members.items():
                assert folder.encode() not in data, name
