"""The demo bundle format, and reading one without trusting it.

A bundle is one zip:

    manifest.json                          format, versions, models, settings, contents, and the
                                           size and SHA-256 of every other member
    knowledge/<n>/catalog.json             a knowledge base: its name and documents
    knowledge/<n>/passages.jsonl           its passages (id, text, metadata), one per line
    knowledge/<n>/embeddings.safetensors   their vectors, in the same order
    knowledge/<n>/files/<sha256>.<type>    optionally, the original files
    adapters/<n>/adapter_model.safetensors an adapter: PEFT's weights and config, our metadata
    adapters/<n>/adapter_config.json
    adapters/<n>/studio.json
    arena/<id>.json                        saved arena conversations
    evaluations/<id>.json                  saved evaluation reports

`read_bundle` checks everything before anything is written anywhere: that it is a whole zip, the
manifest and its version, sizes (a zip bomb is refused from its headers, and reads never go past
the declared sizes), member names (no absolute paths, no `..`, no links, nothing outside the list
above), hashes, that weights are safetensors and nothing is pickled, and that the JSON parses.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import InvalidInputError

FORMAT = "lora-rag-studio-demo"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MEMBERS = 50_000
MAX_RATIO = 200  # a member that unpacks to more than 200x its packed size is a zip bomb
_RATIO_FLOOR = 1_000_000  # ...once it unpacks to more than 1 MB (tiny files compress wildly)
_CHUNK = 1 << 20

# Pickle can run code when loaded: these never enter a studio, whatever their name says.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
ALLOWED = re.compile(
    r"^(?:knowledge/\d{1,4}/(?:catalog\.json|passages\.jsonl|embeddings\.safetensors"
    r"|files/[0-9a-f]{64}\.(?:pdf|txt|md|docx|html|htm))"
    r"|adapters/\d{1,4}/(?:adapter_model\.safetensors|adapter_config\.json|studio\.json)"
    r"|arena/[0-9a-z]{1,64}\.json"
    r"|evaluations/[0-9a-z]{1,64}\.json)$"
)


class BundleError(InvalidInputError):
    """A bundle that cannot be imported; the message says why, for the person who chose it."""


# -- what a bundle's JSON may hold ---------------------------------------------------------------
# Every JSON member is parsed into one of these before anything uses it: a wrong type, an
# overlong name or a folder outside the layout above is refused at the door, not met by a page.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


ModelName = Field("", max_length=300)


class FileEntry(_Strict):
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class KnowledgeEntry(_Strict):
    name: str = Field(min_length=1, max_length=64)
    folder: str = Field(pattern=r"^knowledge/\d{1,4}$")
    documents: int = Field(0, ge=0)
    passages: int = Field(0, ge=0)
    with_files: bool = False


class AdapterEntry(_Strict):
    name: str = Field(min_length=1, max_length=80)
    run_id: str = Field(pattern=r"^[0-9A-Za-z_-]{1,64}$")
    folder: str = Field(pattern=r"^adapters/\d{1,4}$")
    base_model: str = ModelName


class Manifest(_Strict):
    format: str
    format_version: int = Field(ge=1)
    app_version: str = Field("", max_length=64)
    created: float = 0.0
    base_model: str = ModelName
    embedding_model: str = ModelName
    settings: dict[str, str | int | float | None] = Field(default_factory=dict)
    knowledge_bases: list[KnowledgeEntry] = Field(default_factory=list)
    adapters: list[AdapterEntry] = Field(default_factory=list)
    files: dict[str, FileEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        folders = [e.folder for e in self.knowledge_bases] + [e.folder for e in self.adapters]
        run_ids = [e.run_id for e in self.adapters]
        if len(set(folders)) != len(folders) or len(set(run_ids)) != len(run_ids):
            raise ValueError("names the same folder or adapter twice")
        return self


class PassageRow(_Strict):
    id: str = Field(min_length=1, max_length=200)
    text: str
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


def _typed(kind: type[Any], data: Any, name: str) -> Any:
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "its top level"
        raise BundleError(
            f"'{name}' in the bundle is not valid ('{where[:60]}': {first['msg'][:100]}): the "
            "bundle is damaged or was not made by LoRA-RAG Studio."
        ) from None


@dataclass
class Bundle:
    """A checked bundle: its manifest and every member's bytes, all verified."""

    manifest: Manifest
    members: dict[str, bytes] = field(default_factory=dict)
    vectors: dict[str, Any] = field(default_factory=dict)  # knowledge base folder -> matrix
    passages: dict[str, list[PassageRow]] = field(default_factory=dict)  # folder -> rows

    def json(self, name: str) -> Any:
        return json.loads(self.members[name])

    def jsonl(self, name: str) -> list[Any]:
        return [json.loads(line) for line in self.members[name].splitlines() if line.strip()]

    @property
    def knowledge_bases(self) -> list[KnowledgeEntry]:
        return list(self.manifest.knowledge_bases)

    @property
    def adapters(self) -> list[AdapterEntry]:
        return list(self.manifest.adapters)

    @property
    def conversations(self) -> list[str]:
        return [n for n in self.members if n.startswith("arena/")]

    @property
    def evaluations(self) -> list[str]:
        return [n for n in self.members if n.startswith("evaluations/")]

    def size(self) -> int:
        return sum(len(data) for data in self.members.values())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_member_name(name: str) -> bool:
    """A relative path of plain parts: no absolute path, drive, backslash, `..` or empty part."""
    if not name or name.startswith("/") or "\\" in name or ":" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _looks_pickled(name: str, head: bytes) -> bool:
    # Protocol 2+ pickles start with 0x80 and the protocol number; torch's zip checkpoints hold
    # a data.pkl (caught by the suffix or the member list).
    return PurePosixPath(name).suffix.lower() in PICKLE_SUFFIXES or (
        len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5
    )


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, never more than its header declared (zipfile stops there itself; the
    check makes it explicit)."""
    # Our exports are plain deflate; zipfile raises RuntimeError and NotImplementedError for
    # these two, which are not zip errors.
    if info.flag_bits & 0x1:
        raise BundleError(f"'{info.filename}' is encrypted: demo bundles never are. Refused.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleError(
            f"'{info.filename}' is packed in a way the studio does not read (method "
            f"{info.compress_type}): export the bundle from the studio again."
        )
    buffer = io.BytesIO()
    with archive.open(info) as handle:
        while chunk := handle.read(_CHUNK):
            buffer.write(chunk)
            if buffer.tell() > info.file_size:
                raise BundleError(f"'{info.filename}' unpacks to more than it says: refused.")
    return buffer.getvalue()


def check_safetensors(name: str, data: bytes) -> dict[str, Any]:
    """The tensors of a safetensors file, as numpy arrays; anything else is refused."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return dict(load(data))
    except (SafetensorError, ValueError, OSError) as error:
        raise BundleError(
            f"'{name}' is not a valid safetensors file: the bundle is damaged."
        ) from error


def _manifest(archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo]) -> Manifest:
    info = infos.get(MANIFEST)
    if info is None:
        raise BundleError(
            "This zip has no manifest.json, so it is not a demo bundle made by LoRA-RAG Studio. "
            "Export one on the Share page."
        )
    if info.file_size > 16 * _CHUNK:
        raise BundleError("The bundle's manifest is too large: refused.")
    try:
        manifest = json.loads(_read(archive, info))
    except ValueError as error:
        raise BundleError(
            "The bundle's manifest.json cannot be read: the bundle is damaged."
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError("This zip is not a demo bundle made by LoRA-RAG Studio.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError("The bundle's format version is missing or not valid: it is damaged.")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"This bundle was made by a newer LoRA-RAG Studio (bundle format {version}; this "
            f"studio reads format {FORMAT_VERSION}). Update the studio to open it."
        )
    if not isinstance(manifest.get("files"), dict):
        raise BundleError("The bundle's manifest lists no files: the bundle is damaged.")
    return _typed(Manifest, manifest, MANIFEST)


def _check_headers(infos: Iterable[zipfile.ZipInfo], max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    found: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if info.is_dir():
            continue
        if not safe_member_name(name) or _is_link(info):
            raise BundleError(
                f"The bundle holds '{name[:80]}', a path that would land outside the studio's "
                "folder: refused."
            )
        if name in found:
            raise BundleError(f"The bundle holds '{name}' twice: refused.")
        if _looks_pickled(name, b""):
            raise BundleError(
                f"The bundle holds '{name}', a pickled file that could run code when loaded. "
                "Only safetensors weights are accepted."
            )
        if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(
            info.compress_size, 1
        ):
            raise BundleError(
                f"'{name}' would unpack to {info.file_size / 1e6:.0f} MB from "
                f"{info.compress_size / 1e3:.0f} KB: this looks like a zip bomb, refused."
            )
        total += info.file_size
        if total > max_bytes:
            raise BundleError(
                f"The bundle unpacks to more than {max_bytes / 1e6:.0f} MB, the limit "
                "(LRS_MAX_BUNDLE_MB): refused."
            )
        found[name] = info
    return found


def read_bundle(source: bytes | Path | IO[bytes], max_bytes: int) -> Bundle:
    """Open and verify a bundle completely, in memory; BundleError says what is wrong."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with zipfile.ZipFile(source) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BundleError(f"The bundle holds more than {MAX_MEMBERS} files: refused.")
            by_name = _check_headers(infos, max_bytes)
            manifest = _manifest(archive, by_name)
            listed = manifest.files
            bundle = Bundle(manifest)
            for name, info in by_name.items():
                if name == MANIFEST:
                    continue
                if name not in listed or not ALLOWED.match(name):
                    raise BundleError(
                        f"The bundle holds '{name[:80]}', which a demo bundle never contains: "
                        "refused."
                    )
                data = _read(archive, info)
                if _looks_pickled(name, data[:2]):
                    raise BundleError(
                        f"The bundle holds '{name}', a pickled file that could run code when "
                        "loaded. Only safetensors weights are accepted."
                    )
                expected = listed[name]
                if len(data) != expected.size or sha256(data) != expected.sha256:
                    raise BundleError(
                        f"'{name}' does not match the manifest: the bundle is damaged or was "
                        "changed after export."
                    )
                bundle.members[name] = data
    except BundleError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError) as error:
        raise BundleError(
            "This file is not a complete zip: it is damaged or cut short (a download that did "
            "not finish?). Export the bundle again."
        ) from error
    missing = sorted(set(listed) - set(bundle.members))
    if missing:
        raise BundleError(
            f"The bundle is incomplete: '{missing[0]}' is listed in its manifest but missing."
        )
    _check_contents(bundle)
    return bundle


def _check_contents(bundle: Bundle) -> None:
    """Every JSON parses, every safetensors file is one, and each knowledge base's vectors match
    its passages."""
    for name, data in bundle.members.items():
        try:
            if name.endswith(".json"):
                json.loads(data)
            elif name.endswith(".jsonl"):
                bundle.jsonl(name)
        except ValueError as error:
            raise BundleError(f"'{name}' cannot be read: the bundle is damaged.") from error
    for entry in bundle.knowledge_bases:
        folder = entry.folder
        needed = [
            f"{folder}/{n}" for n in ("catalog.json", "passages.jsonl", "embeddings.safetensors")
        ]
        if not all(n in bundle.members for n in needed):
            raise BundleError(f"The knowledge base '{entry.name}' is incomplete in the bundle.")
        vectors = check_safetensors(needed[2], bundle.members[needed[2]]).get("embeddings")
        passages = [_typed(PassageRow, row, needed[1]) for row in bundle.jsonl(needed[1])]
        if vectors is None or vectors.ndim != 2 or len(vectors) != len(passages):
            raise BundleError(
                f"The knowledge base '{entry.name}' has passages and vectors that do not "
                "match: the bundle is damaged."
            )
        bundle.vectors[folder] = vectors
        bundle.passages[folder] = passages
    for adapter_entry in bundle.adapters:
        weights = f"{adapter_entry.folder}/adapter_model.safetensors"
        needed = [
            weights,
            f"{adapter_entry.folder}/adapter_config.json",
            f"{adapter_entry.folder}/studio.json",
        ]
        if not all(n in bundle.members for n in needed):
            raise BundleError(f"The adapter '{adapter_entry.name}' is incomplete in the bundle.")
        check_safetensors(weights, bundle.members[weights])


def write_zip(target: Path, manifest: dict[str, Any], members: dict[str, bytes]) -> None:
    """Write a bundle: the members, then the manifest with each member's size and hash."""
    manifest = {
        **manifest,
        "files": {n: {"size": len(d), "sha256": sha256(d)} for n, d in members.items()},
    }
    partial = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=2))
        for name, data in members.items():
            # Weights and vectors barely compress: store them, and spare the CPU.
            method = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    partial.replace(target)
