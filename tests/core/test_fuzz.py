"""Fuzzing with a fixed budget: whatever bytes a user uploads, parsing ends in a result or in one
of our plain errors (core.errors), never in a crash the page would show as a stack trace, within
a time limit and a memory cap per input (`within`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import tracemalloc
import zipfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import StudioError
from core.evaluation.questions import parse_eval_set
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.sharing.bundle import read_bundle, write_zip
from core.training.datasets import parse_dataset

# The same examples at every run, so that the suite stays green or red for a reason;
# LRS_FUZZ=explore draws new ones (and hypothesis keeps any failure it finds in .hypothesis/).
settings.register_profile("fixed", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("LRS_FUZZ", "fixed"))

# Per input, far above what a sound parser needs here (milliseconds and a few MB): the limits catch
# a loop that never ends or a size field believed (a 2 KB upload asking for gigabytes).
SECONDS = 10
MEGABYTES = 256


class OverTime(BaseException):
    """Raised into a parse running past SECONDS (a BaseException: `except Exception` lets it by)."""


@contextlib.contextmanager
def within(seconds: float = SECONDS, megabytes: int = MEGABYTES) -> Iterator[None]:
    """Fail when the block runs longer than `seconds` or its Python allocations peak above
    `megabytes` (tracemalloc sees every thread's allocations, C extensions' through Python's
    allocator included)."""

    def expire(_signal: int, _frame: object) -> None:
        raise OverTime(f"still parsing after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    tracemalloc.start()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < megabytes * 2**20, f"peaked at {peak / 2**20:.0f} MB of Python memory"


BUDGET = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
KEYS = [
    "instruction",
    "input",
    "output",
    "messages",
    "role",
    "content",
    "prompt",
    "completion",
    "question",
    "answer",
    "reference",
    "accepted",
    "conversations",
    "from",
    "value",
]
ROWS = st.lists(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4), max_size=6)


def as_jsonl(rows: list) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def as_csv(rows: list) -> bytes:
    keys = sorted({k for r in rows for k in r})
    lines = [",".join(keys)] + [",".join(json.dumps(r.get(k, "")) for k in keys) for r in rows]
    return "\n".join(lines).encode()


UPLOADS = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(str.encode),
    ROWS.map(as_jsonl),
    ROWS.map(json.dumps).map(str.encode),
    ROWS.map(as_csv),
)


@BUDGET
@given(data=UPLOADS, suffix=st.sampled_from(["jsonl", "json", "csv", "txt"]))
def test_dataset_parsing_returns_a_dataset_or_a_plain_error(data: bytes, suffix: str) -> None:
    try:
        with within():
            found = parse_dataset(f"upload.{suffix}", data)
    except StudioError:
        return
    for problem in found.problems:
        assert str(problem).strip()


@BUDGET
@given(data=UPLOADS, suffix=st.sampled_from(["jsonl", "json", "csv"]))
def test_evaluation_set_parsing_returns_questions_or_a_plain_error(
    data: bytes, suffix: str
) -> None:
    try:
        with within():
            found = parse_eval_set(f"questions.{suffix}", data)
    except StudioError:
        return
    assert all(item.question.strip() for item in found.items)


def small_bundle() -> bytes:
    """A valid bundle holding a report and a conversation, to damage."""
    import tempfile
    from pathlib import Path

    members = {
        "evaluations/abc123.json": json.dumps({"id": "abc123", "name": "x"}).encode(),
        "arena/def456.json": json.dumps({"id": "def456"}).encode(),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bundle.zip"
        write_zip(path, {"format": "lora-rag-studio-demo", "format_version": 1}, members)
        return path.read_bytes()


VALID = small_bundle()


@BUDGET
@given(
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, len(VALID)),
)
def test_a_damaged_bundle_is_read_or_refused_plainly(flips: list, cut: int) -> None:
    data = bytearray(VALID[:cut] if cut else VALID)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    with contextlib.suppress(StudioError), within():
        read_bundle(bytes(data), 10_000_000)


@BUDGET
@given(
    names=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4, unique=True),
    body=st.binary(max_size=200),
)
def test_zip_member_names_of_any_kind_never_escape_the_checks(names: list, body: bytes) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "manifest.json",
            json.dumps({"format": "lora-rag-studio-demo", "format_version": 1, "files": {}}),
        )
        for name in names:
            try:
                archive.writestr(name, body)
            except (ValueError, UnicodeEncodeError, IndexError):  # names zipfile cannot write
                continue
    try:
        with within():
            bundle = read_bundle(buffer.getvalue(), 10_000_000)
    except StudioError:
        return
    assert bundle.members == {}  # nothing that is not listed and allowed gets through


@pytest.fixture
def kb(knowledge):  # type: ignore[no-untyped-def]
    return knowledge.create("Fuzz")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=3000) | st.text(max_size=2000).map(str.encode),
    suffix=st.sampled_from(["txt", "md", "html", "docx", "pdf"]),
)
def test_any_document_is_added_or_refused_with_a_reason(kb, data: bytes, suffix: str) -> None:
    with within():
        events = list(ingest(kb, [UploadedFile(f"upload.{suffix}", data)], ChunkSettings(200, 20)))
    (outcome,) = [e for e in events if e.status not in ("started", "progress")]  # one per file
    assert outcome.status in ("added", "failed", "skipped", "replaced", "redone"), outcome
    assert outcome.message.strip()


def document_samples() -> dict[str, bytes]:
    """A small valid PDF and Word file, to damage: random bytes rarely get past the first check."""
    from tests.support.documents import docx_bytes, pdf_bytes

    return {
        "pdf": pdf_bytes(["Page one of the handbook.", "The door code is KESTREL-7731."]),
        "docx": docx_bytes(["The door code is KESTREL-7731.", "Second paragraph."]),
    }


SAMPLES = document_samples()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    suffix=st.sampled_from(sorted(SAMPLES)),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
    cut=st.floats(0.05, 1),
)
def test_a_damaged_pdf_or_word_file_is_added_or_refused_with_a_reason(
    kb, suffix: str, flips: list, cut: float
) -> None:
    sample = SAMPLES[suffix]
    data = bytearray(sample[: max(1, int(len(sample) * cut))])
    for where, value in flips:
        data[int(where * len(data))] = value
    with within():
        events = list(ingest(kb, [UploadedFile(f"upload.{suffix}", bytes(data))], ChunkSettings()))
    (outcome,) = [e for e in events if e.status not in ("started", "progress")]
    assert outcome.status in ("added", "failed", "skipped", "replaced", "redone"), outcome
    assert outcome.message.strip()


def test_the_limits_catch_a_parse_that_never_ends_or_grows_without_bound() -> None:
    with pytest.raises(OverTime), within(seconds=0.2):
        while True:
            pass
    with pytest.raises(AssertionError, match="peaked at"), within(megabytes=8):
        hoard = [bytes(1_000_000) for _ in range(20)]
        del hoard
