"""Demo bundles: export, import round trip, bad bundles refused with nothing written, demo mode."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import stat
import zipfile
from pathlib import Path

import pytest

from core import adapters, arena, evaluate, jobs, models, share
from core.bundle import FORMAT_VERSION, MANIFEST, BundleError, read_bundle, write_zip
from core.errors import ReadOnlyError
from core.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge import KnowledgeStore, studio_id
from core.retrieve import search
from core.settings import Settings
from tests.sharing import HANDBOOK, RULES, fill

QUESTIONS = ["release code for night departures", "where is fuel sold", "refund period"]


@pytest.fixture
def studio(settings: Settings, knowledge: KnowledgeStore) -> dict:
    """A studio with a knowledge base, an adapter, a conversation and an evaluation report."""
    return fill(settings, knowledge.embeddings)


def export(settings: Settings, knowledge: KnowledgeStore, studio: dict, target: Path) -> Path:
    choice = share.ExportChoice(
        knowledge_bases=["Harbour"],
        adapters=[studio["run_id"]],
        conversations=[studio["conversation"]],
        evaluations=[studio["report"]],
    )
    return share.export_bundle(settings, knowledge, choice, target)


def other_studio(settings: Settings, tmp_path: Path, fake_embeddings) -> tuple:  # type: ignore[no-untyped-def]
    elsewhere = settings.model_copy(update={"data_dir": tmp_path / "elsewhere"})
    return elsewhere, KnowledgeStore(elsewhere, fake_embeddings)


def weights_hash(folder: Path) -> str:
    return hashlib.sha256((folder / adapters.WEIGHTS_FILE).read_bytes()).hexdigest()


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_round_trip_gives_the_same_retrieval_and_the_same_adapter_weights(
    settings, knowledge, studio, tmp_path, fake_embeddings
) -> None:
    bundle = export(settings, knowledge, studio, tmp_path / "demo.zip")
    elsewhere, store = other_studio(settings, tmp_path, fake_embeddings)
    result = share.import_bundle(elsewhere, store, bundle)
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

    (report,) = evaluate.list_reports(elsewhere)
    assert report.adapter == imported.run_id and report.knowledge_base == "Harbour"
    assert evaluate.status(report) == "completed" and report.results[0].correct("rag")
    conversation = arena.load(elsewhere, studio["conversation"])
    assert conversation.adapter == imported.run_id
    assert conversation.exchanges[0].answers["rag"].text == "BLUE-HARBOR-42"

    checked = read_bundle(bundle.read_bytes(), 10**9)
    manifest = checked.manifest
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.base_model == models.shared_name(settings.base_model)
    assert manifest.embedding_model == models.shared_name(settings.embedding_model)
    assert manifest.settings["system_prompt"] == settings.system_prompt
    # No member says where the models or the data lie on the maker's machine.
    for folder in {settings.base_model, str(settings.data_dir)} - {""}:
        if "/" in folder:
            for name, data in checked.members.items():
                assert folder.encode() not in data, name


def test_a_second_import_gets_new_names_unless_the_user_replaces(
    settings, knowledge, studio, tmp_path
) -> None:
    bundle = export(settings, knowledge, studio, tmp_path / "demo.zip")
    plan = share.plan_import(settings, read_bundle(bundle.read_bytes(), 10**9))
    assert plan.conflicts == ["knowledge base 'Harbour'", "adapter 'Harbour voice'"]
    assert plan.knowledge_bases == {"Harbour": "Harbour - imported"}

    share.import_bundle(settings, knowledge, bundle)
    assert knowledge.names() == ["Harbour", "Harbour - imported"]
    names = sorted(a.name for a in adapters.list_adapters(settings))
    assert names == ["Harbour voice", "Harbour voice - imported"]
    assert len(evaluate.list_reports(settings)) == 2  # the copy got an id of its own

    first_kb = knowledge.open("Harbour").passage_count()
    share.import_bundle(settings, knowledge, bundle, replace=True)
    assert knowledge.names() == ["Harbour", "Harbour - imported"]
    assert knowledge.open("Harbour").passage_count() == first_kb
    assert search(knowledge.open("Harbour"), QUESTIONS[0]).passages
    names = sorted(a.name for a in adapters.list_adapters(settings))
    assert names == ["Harbour voice", "Harbour voice - imported"]
    assert len(evaluate.list_reports(settings)) == 2


def test_a_failed_import_leaves_nothing_behind(
    settings, knowledge, studio, tmp_path, fake_embeddings, monkeypatch
) -> None:
    bundle = export(settings, knowledge, studio, tmp_path / "demo.zip")
    elsewhere, store = other_studio(settings, tmp_path, fake_embeddings)
    store.names()  # the empty studio, as it is before the import
    studio_id(elsewhere)  # with its identity, made at its first knowledge base
    before = everything_under(elsewhere.data_dir)

    def disk_full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(share, "_import_adapter", disk_full)
    with pytest.raises(BundleError, match="nothing was kept"):
        share.import_bundle(elsewhere, store, bundle)
    assert store.names() == [] and adapters.list_adapters(elsewhere) == []
    assert evaluate.list_reports(elsewhere) == []
    left = [p for p in everything_under(elsewhere.data_dir) if not p.startswith("chroma/")]
    assert left == [p for p in before if not p.startswith("chroma/")]
    assert store.names() == []


# -- bad bundles -----------------------------------------------------------------------------------
def rebuilt(bundle: Path, target: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """The bundle with its members changed by `change(manifest, members)`, hashes redone."""
    with zipfile.ZipFile(bundle) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n != MANIFEST}
        manifest = json.loads(archive.read(MANIFEST))
    change(manifest, members)
    write_zip(target, manifest, members)
    return target


def with_extra_member(bundle: Path, target: Path, info: zipfile.ZipInfo | str, data: bytes) -> Path:
    target.write_bytes(bundle.read_bytes())
    with zipfile.ZipFile(target, "a") as archive:
        archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return target


def another_base_model(manifest: dict, members: dict) -> None:
    meta = json.loads(members["adapters/1/studio.json"])
    members["adapters/1/studio.json"] = json.dumps({**meta, "base_model": "org/other"}).encode()


def pickled_weights(manifest: dict, members: dict) -> None:
    manifest["files"]["adapters/1/adapter_model.bin"] = {}
    members["adapters/1/adapter_model.bin"] = pickle.dumps({"weights": [1, 2, 3]})


def pickle_named_as_json(manifest: dict, members: dict) -> None:
    members["evaluations/abc.json"] = pickle.dumps({"weights": [1, 2, 3]})


def newer_format(manifest: dict, members: dict) -> None:
    manifest["format_version"] = FORMAT_VERSION + 1


def document_path_in_disguise(manifest: dict, members: dict) -> None:
    catalog = json.loads(members["knowledge/1/catalog.json"])
    catalog["documents"][0]["content_hash"] = "../../../evil"
    members["knowledge/1/catalog.json"] = json.dumps(catalog).encode()


def _edit_json(members: dict, prefix: str, change) -> None:  # type: ignore[no-untyped-def]
    (name,) = [n for n in members if n.startswith(prefix) and n.endswith(".json")]
    data = json.loads(members[name])
    change(data)
    members[name] = json.dumps(data).encode()


def conversation_id(value: str):  # type: ignore[no-untyped-def]
    return lambda manifest, members: _edit_json(members, "arena/", lambda d: d.update(id=value))


def report_with_wrong_types(manifest: dict, members: dict) -> None:
    _edit_json(members, "evaluations/", lambda d: d.update(items="not a list", created=[1]))


def endless_adapter_name(manifest: dict, members: dict) -> None:
    manifest["adapters"][0]["name"] = "x" * 5000


def manifest_with_wrong_types(manifest: dict, members: dict) -> None:
    manifest["knowledge_bases"] = {"name": ["Harbour"]}


def symlink_info() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("arena/link.json")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


BAD = {
    "dot-dot": (lambda b, t: with_extra_member(b, t, "../evil.txt", b"x"), "outside"),
    "absolute": (lambda b, t: with_extra_member(b, t, "/etc/evil.txt", b"x"), "outside"),
    "symlink": (lambda b, t: with_extra_member(b, t, symlink_info(), b"/etc/passwd"), "outside"),
    "zip bomb": (
        lambda b, t: with_extra_member(b, t, "knowledge/9/files/bomb.txt", bytes(30_000_000)),
        "zip bomb",
    ),
    "no manifest": (
        lambda b, t: t.write_bytes(_zip({"knowledge/1/catalog.json": b"{}"})) and t,
        "no manifest",
    ),
    "newer format": (lambda b, t: rebuilt(b, t, newer_format), "newer LoRA-RAG Studio"),
    "pickled file": (lambda b, t: rebuilt(b, t, pickled_weights), "pickled"),
    "pickle in disguise": (lambda b, t: rebuilt(b, t, pickle_named_as_json), "pickled"),
    "another base model": (lambda b, t: rebuilt(b, t, another_base_model), "trained on"),
    "truncated": (
        lambda b, t: t.write_bytes(b.read_bytes()[: b.stat().st_size // 2]) and t,
        "cut short",
    ),
    "tampered": (
        lambda b, t: _tamper(b, t),
        "does not match the manifest",
    ),
    "unlisted member": (
        lambda b, t: with_extra_member(b, t, "notes/readme.txt", b"hello"),
        "never contains",
    ),
    "path in a record": (lambda b, t: rebuilt(b, t, document_path_in_disguise), "damaged list"),
    "not a zip": (lambda b, t: t.write_bytes(b"%PDF-1.7 not a zip") and t, "not a complete zip"),
    "conversation id climbs out": (
        lambda b, t: rebuilt(b, t, conversation_id("../../../outside/pwned")),
        "cannot be read",
    ),
    "conversation id is absolute": (
        lambda b, t: rebuilt(b, t, conversation_id(str(t.parent / "absolute-pwned"))),
        "cannot be read",
    ),
    "report of wrong types": (
        lambda b, t: rebuilt(b, t, report_with_wrong_types),
        "cannot be read",
    ),
    "endless adapter name": (lambda b, t: rebuilt(b, t, endless_adapter_name), "manifest"),
    "manifest of wrong types": (lambda b, t: rebuilt(b, t, manifest_with_wrong_types), "manifest"),
}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tamper(bundle: Path, target: Path) -> Path:
    with zipfile.ZipFile(bundle) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members["knowledge/1/passages.jsonl"] = members["knowledge/1/passages.jsonl"].replace(
        b"BLUE-HARBOR-42", b"RED-HARBOR-666"
    )
    target.write_bytes(_zip(members))
    return target


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_bundle_is_refused_with_its_message_and_nothing_written(
    case, settings, knowledge, studio, tmp_path, fake_embeddings
) -> None:
    good = export(settings, knowledge, studio, tmp_path / "good.zip")
    make, message = BAD[case]
    bad = make(good, tmp_path / "bad.zip")
    elsewhere, store = other_studio(settings, tmp_path, fake_embeddings)
    store.names()
    before = everything_under(elsewhere.data_dir)
    with pytest.raises(BundleError, match=message):
        share.import_bundle(elsewhere, store, bad)
    assert everything_under(elsewhere.data_dir) == before
    assert store.names() == [] and adapters.list_adapters(elsewhere) == []
    assert not list(tmp_path.glob("**/*pwned*"))
    with pytest.raises(BundleError, match=message):  # nor does demo mode, at start-up
        share.open_demo(elsewhere.model_copy(update={"demo_bundle": bad}))
    assert not list(tmp_path.glob("**/*pwned*"))


def test_a_bundle_larger_than_the_limit_is_refused(settings, knowledge, studio, tmp_path) -> None:
    bundle = export(settings, knowledge, studio, tmp_path / "demo.zip")
    with pytest.raises(BundleError, match="LRS_MAX_BUNDLE_MB"):
        read_bundle(bundle.read_bytes(), max_bytes=1_000)


# -- demo mode -------------------------------------------------------------------------------------
def test_demo_mode_presents_the_bundle_and_core_refuses_every_change(
    settings, knowledge, studio, tmp_path, fake_embeddings
) -> None:
    bundle = export(settings, knowledge, studio, tmp_path / "demo.zip")
    host = settings.model_copy(
        update={"data_dir": tmp_path / "host", "demo_bundle": bundle, "system_prompt": "Other."}
    )
    demo = share.open_demo(host)
    assert demo.read_only and demo.data_dir.is_relative_to(host.data_dir)
    assert demo.system_prompt == settings.system_prompt  # the bundle's answer settings
    assert demo.models_dir == host.models_dir  # prepared models are shared, not copied
    store = KnowledgeStore(demo, fake_embeddings)
    kb = store.open("Harbour")
    assert search(kb, QUESTIONS[0]).passages  # reading works
    (adapter,) = adapters.list_adapters(demo)
    assert len(evaluate.list_reports(demo)) == 1
    assert share.open_demo(host).data_dir == demo.data_dir  # unpacked once, reused

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
        lambda: evaluate.delete(demo, studio["report"]),
        lambda: evaluate.save(demo, evaluate.load(demo, studio["report"])),
        lambda: arena.save(demo, arena.Conversation()),
        lambda: share.import_bundle(demo, store, bundle),
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
        share.open_demo(missing)
    bundle = rebuilt(
        export(settings, knowledge, studio, tmp_path / "demo.zip"),
        tmp_path / "offline.zip",
        lambda manifest, members: manifest.update(base_model="org/not-on-this-machine"),
    )
    offline = settings.model_copy(update={"demo_bundle": bundle, "offline": True})
    with pytest.raises(share.ModelNotAvailableError, match="not on this machine"):
        share.open_demo(offline)


def test_a_replacing_import_that_fails_keeps_what_was_there(
    settings, knowledge, studio, tmp_path, monkeypatch
) -> None:
    bundle = export(settings, knowledge, studio, tmp_path / "demo.zip")
    conversation_file = (
        arena.arena_dir(settings) / "conversations" / f"{studio['conversation']}.json"
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
        share.import_bundle(settings, knowledge, bundle, replace=True)
    assert knowledge.names() == ["Harbour"]
    assert knowledge.open("Harbour").passage_count() == passages
    assert search(knowledge.open("Harbour"), QUESTIONS[0]).passages
    assert [a.run_id for a in adapters.list_adapters(settings)] == [studio["run_id"]]
    assert conversation_file.read_bytes() == kept_conversation  # overwritten, then put back
    assert [r.id for r in evaluate.list_reports(settings)] == [studio["report"]]
