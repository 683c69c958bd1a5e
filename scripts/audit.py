"""Known vulnerabilities in our pins, with pip-audit (`make audit`).

    python scripts/audit.py constraints.txt torch==2.13.0

Fails (exit 1) when pip-audit finds a known vulnerability in a pinned version, when it cannot run
at all, and when a pin cannot be checked and is not allowed, with a reason and a date, in
`scripts/audit-allow.toml` (which also scopes the advisories we ignore to their package). Where
PyPI's per-release pages cannot be reached (a registry proxy, as on our CI machines), a pin that
is its project's latest release is checked against the project page instead, whose advisories are
those of the latest release.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, Field

PROJECT_PAGE = "https://pypi.org/pypi/{name}/json"
ALLOW = Path(__file__).with_name("audit-allow.toml")
GRACE_DAYS = 30  # how long a superseded pin may stay unchecked before it must be refreshed
ATTEMPTS = 3  # tries for each project page


class Unchecked(BaseModel):
    name: str
    version: str
    reason: str = Field(min_length=10)
    added: date
    until: date


class Ignore(BaseModel):
    package: str
    id: str
    reason: str = Field(min_length=10)
    until: date


class Allowed(BaseModel):
    """What the audit may let pass, each entry with a reason and a date it holds until."""

    unchecked: list[Unchecked] = []
    ignore: list[Ignore] = []


def allowed(today: date) -> tuple[set[tuple[str, str]], dict[str, set[str]], list[str]]:
    """The pins allowed to be unchecked, the advisories ignored per package, and the entries
    whose date has passed (which fail the audit)."""
    entries = Allowed.model_validate(tomllib.loads(ALLOW.read_text()))
    expired = [f"{e.name} {e.version}" for e in entries.unchecked if e.until < today]
    expired += [f"{e.package}: {e.id}" for e in entries.ignore if e.until < today]
    pins = {(canonicalize_name(e.name), e.version) for e in entries.unchecked if e.until >= today}
    ignores: dict[str, set[str]] = {}
    for entry in entries.ignore:
        if entry.until >= today:
            ignores.setdefault(canonicalize_name(entry.package), set()).add(entry.id)
    return pins, ignores, expired


def project_page(name: str) -> dict | None:
    """PyPI's page of a project, or None when it does not answer after ATTEMPTS tries (a CI run
    once lost two of 30 pages at once to a passing network fault, and failed)."""
    for attempt in range(ATTEMPTS):
        try:
            with urllib.request.urlopen(PROJECT_PAGE.format(name=name), timeout=20) as reply:  # noqa: S310
                return json.load(reply)
        except (OSError, ValueError):
            if attempt + 1 < ATTEMPTS:
                time.sleep(2**attempt)  # 1 s, then 2 s: bounded, as every wait
    return None


def latest_release_advisories(dependency: dict, pins: dict[str, str]) -> dict:
    """pip-audit's entry for a pin it skipped, from the project page when the pin is the latest."""
    name = dependency["name"]
    version = pins.get(canonicalize_name(name), "")
    page = project_page(name)
    if page is None:
        return dependency
    if not version or page["info"]["version"] != version:
        # An older pin: the page says nothing of its advisories, only when it was superseded.
        return {**dependency, "version": version, "superseded": _superseded(page, version)}
    vulns = [
        {"id": v["id"], "aliases": v.get("aliases", []), "fix_versions": v.get("fixed_in", [])}
        for v in page.get("vulnerabilities", [])
        if not v.get("withdrawn")
    ]
    return {"name": name, "version": version, "vulns": vulns}


def _superseded(page: dict, version: str) -> str:
    """When the first release after `version` came out (an ISO date), or "" when unknown."""
    try:
        pinned = Version(version)
        times = [
            file["upload_time_iso_8601"][:10]
            for release, files in page.get("releases", {}).items()
            if Version(release) > pinned and not Version(release).is_prerelease
            for file in files
        ]
    except (InvalidVersion, KeyError, TypeError):
        return ""
    return min(times, default="")


def main(constraints: str, *extra: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        requirements = Path(folder) / "requirements.txt"
        lines = [*Path(constraints).read_text().splitlines(), *extra]
        requirements.write_text("\n".join(lines) + "\n")
        pins = {
            canonicalize_name(r.name): next(iter(r.specifier)).version
            for r in (Requirement(x) for x in lines if x.strip() and not x.startswith("#"))
        }
        report = Path(folder) / "audit.json"
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pip_audit"),
                *("--requirement", str(requirements), "--no-deps", "--disable-pip"),
                *("--vulnerability-service", "pypi", "--progress-spinner", "off"),
                *("--format", "json", "--output", str(report)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if not report.exists():
            print("pip-audit could not run; its last words:", done.stderr[-2000:], sep="\n")
            print("Audit: FAILED, nothing was checked (see above). Run `make audit` again.")
            return 1
        dependencies = json.loads(report.read_text())["dependencies"]
    with ThreadPoolExecutor(16) as pool:
        dependencies = list(
            pool.map(
                lambda d: latest_release_advisories(d, pins) if "skip_reason" in d else d,
                dependencies,
            )
        )

    allowed_pins, ignores, expired = allowed(date.today())
    ignored = 0
    for dependency in dependencies:
        found = dependency.get("vulns", [])
        scoped = ignores.get(canonicalize_name(dependency["name"]), set())
        dependency["vulns"] = [v for v in found if not {v["id"], *v.get("aliases", [])} & scoped]
        ignored += len(found) - len(dependency["vulns"])
    vulnerable = [d for d in dependencies if d["vulns"]]
    unchecked = [d for d in dependencies if "skip_reason" in d]
    checked = len(dependencies) - len(unchecked)
    # A pin superseded less than GRACE_DAYS ago cannot be checked (the service answers for the
    # latest release only) but is not stale yet: it is listed, and fails once the grace is over
    # unless audit-allow.toml allows it. So a release upstream never fails the suite by chance.
    fresh = (date.today() - timedelta(days=GRACE_DAYS)).isoformat()
    recent = [d for d in unchecked if d.get("superseded", "") > fresh]
    unlisted = [
        f"{d['name']} {d.get('version', '')}".strip()
        for d in unchecked
        if (canonicalize_name(d["name"]), d.get("version", "")) not in allowed_pins
        and d not in recent
    ]
    for d in recent:
        print(
            f"Superseded on {d['superseded']}, not checked: {d['name']} {d['version']} "
            f"(refresh the pins within {GRACE_DAYS} days of that, or allow it in {ALLOW.name})"
        )
    for entry in expired:
        print(f"Allowance expired, look again and renew or remove it in {ALLOW.name}: {entry}")
    for entry in unlisted:
        print(f"Not checked and not allowed in {ALLOW.name} (add it with a reason): {entry}")
    for dependency in vulnerable:
        for vuln in dependency["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed release yet"
            print(f"{dependency['name']} {dependency['version']}: {vuln['id']} (fixed in {fixed})")
    if unchecked:
        names = ", ".join(f"{d['name']} {d.get('version', '')}".strip() for d in unchecked)
        print(
            f"Not checked ({len(unchecked)}; PyPI did not answer for these releases, and they "
            f"are not their project's latest): {names}"
        )
    print(
        f"Audit: {checked} of {len(dependencies)} pins checked against PyPI's advisories "
        f"(pip-audit), "
        f"{sum(len(d['vulns']) for d in vulnerable)} known vulnerabilities "
        f"({ignored} more that do not reach the studio: see {ALLOW.name} and SECURITY.md)."
    )
    return 1 if vulnerable or unlisted or expired else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
