"""The minimum versions SECURITY.md promises are the ones pyproject.toml asks for and we run."""

import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def promised() -> dict[str, Version]:
    """The table of SECURITY.md: | package | minimum | why |."""
    rows = re.findall(r"^\| ([a-z-]+) \| ([0-9.]+) \|", (ROOT / "SECURITY.md").read_text(), re.M)
    return {name: Version(minimum) for name, minimum in rows}


def test_security_floors_are_what_pyproject_asks_and_what_is_installed() -> None:
    table = promised()
    assert set(table) == {"pypdf", "streamlit", "torch", "transformers"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                floors[requirement.name] = Version(spec.version)
    for name, minimum in table.items():
        assert floors[name] >= minimum, f"pyproject.toml lets {name} below {minimum}"
        assert Version(version(name)) >= minimum, f"the installed {name} is below {minimum}"


def _audit():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "audit.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["audit"] = module  # pydantic resolves the models' annotations there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_audit_allows_unchecked_pins_only_when_listed_and_ignores_only_per_package(
    tmp_path, monkeypatch
) -> None:
    from datetime import date

    audit = _audit()
    pins, ignores, expired = audit.allowed(date(2026, 12, 3))  # the repository's own list parses
    assert ("torch", "2.13.0") in pins and expired == []
    assert set(ignores) == {"chromadb"}  # the Chroma server advisories, for chromadb only

    allow = tmp_path / "audit-allow.toml"
    allow.write_text(
        '[[unchecked]]\nname = "Old_Thing"\nversion = "1.0"\nreason = "kept for a reason"\n'
        'added = "2026-01-01"\nuntil = "2026-06-30"\n'
        '[[ignore]]\npackage = "chromadb"\nid = "CVE-1"\nreason = "server only, not ours"\n'
        'until = "2027-01-01"\n'
    )
    monkeypatch.setattr(audit, "ALLOW", allow)
    pins, ignores, expired = audit.allowed(date(2026, 12, 3))
    assert pins == set() and expired == ["Old_Thing 1.0"]  # past its date: it fails again
    assert ignores == {"chromadb": {"CVE-1"}}
    allow.write_text('[[unchecked]]\nname = "x"\nversion = "1"\nreason = ""\n')
    import pydantic

    with pytest.raises(pydantic.ValidationError):  # no reason, no date: not an allowance
        audit.allowed(date(2026, 12, 3))


def test_a_pin_superseded_lately_is_dated_by_the_first_release_after_it() -> None:
    audit = _audit()
    page = {
        "releases": {
            "1.0": [{"upload_time_iso_8601": "2026-10-01T08:00:00Z"}],
            "1.1": [{"upload_time_iso_8601": "2026-12-01T08:00:00Z"}],
            "1.2": [{"upload_time_iso_8601": "2026-12-03T08:00:00Z"}],
            "2.0rc1": [{"upload_time_iso_8601": "2026-11-20T08:00:00Z"}],  # not a release
        }
    }
    assert audit._superseded(page, "1.0") == "2026-12-01"
    assert audit._superseded(page, "1.2") == ""  # the latest: superseded by nothing
    assert audit._superseded({"releases": {"x-y": []}}, "1.0") == ""  # unreadable: no date


def test_a_project_page_that_fails_once_is_asked_again_and_one_that_never_answers_is_none(
    monkeypatch,
) -> None:
    import io
    import json

    audit = _audit()
    monkeypatch.setattr(audit.time, "sleep", lambda seconds: None)  # the backoff, not the point
    calls: list[str] = []

    def flaky(url, timeout):  # type: ignore[no-untyped-def]
        calls.append(url)
        if len(calls) == 1:
            raise OSError("connection reset")
        return io.BytesIO(json.dumps({"info": {"version": "1.1.0"}}).encode())

    monkeypatch.setattr(audit.urllib.request, "urlopen", flaky)
    assert audit.project_page("langchain-chroma") == {"info": {"version": "1.1.0"}}
    assert len(calls) == 2

    def down(url, timeout):  # type: ignore[no-untyped-def]
        calls.append(url)
        raise OSError("no route to host")

    calls.clear()
    monkeypatch.setattr(audit.urllib.request, "urlopen", down)
    assert audit.project_page("langchain-chroma") is None
    assert len(calls) == audit.ATTEMPTS
