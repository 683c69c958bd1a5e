"""Reading a bundle: every way a stranger's file can be wrong is refused with its message,
and nothing is written."""

from __future__ import annotations

import io
import json
import pickle
import stat
import zipfile
from pathlib import Path

import pytest

from core.sharing import demo as sharing_demo
from core.sharing import importing
from core.sharing.bundle import FORMAT_VERSION, BundleError, read_bundle
from core.training import adapters
from tests.support.sharing import (
    everything_under,
    export_studio,
    other_studio,
    rebuilt,
)


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
    good = export_studio(settings, knowledge, studio, tmp_path / "good.zip")
    make, message = BAD[case]
    bad = make(good, tmp_path / "bad.zip")
    elsewhere, store = other_studio(settings, tmp_path, fake_embeddings)
    store.names()
    before = everything_under(elsewhere.data_dir)
    with pytest.raises(BundleError, match=message):
        importing.import_bundle(elsewhere, store, bad)
    assert everything_under(elsewhere.data_dir) == before
    assert store.names() == [] and adapters.list_adapters(elsewhere) == []
    assert not list(tmp_path.glob("**/*pwned*"))
    with pytest.raises(BundleError, match=message):  # nor does demo mode, at start-up
        sharing_demo.open_demo(elsewhere.model_copy(update={"demo_bundle": bad}))
    assert not list(tmp_path.glob("**/*pwned*"))


def test_a_bundle_larger_than_the_limit_is_refused(settings, knowledge, studio, tmp_path) -> None:
    bundle = export_studio(settings, knowledge, studio, tmp_path / "demo.zip")
    with pytest.raises(BundleError, match="LRS_MAX_BUNDLE_MB"):
        read_bundle(bundle.read_bytes(), max_bytes=1_000)
