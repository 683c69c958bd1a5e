"""Known vulnerabilities in our pins, with pip-audit (`make audit`).

    python scripts/audit.py constraints.txt torch==2.13.0

Fails (exit 1) when pip-audit finds a known vulnerability in a pinned version. Pins the
vulnerability service cannot be asked about are listed and counted but do not fail the run: an
unreachable service says nothing about our code. Where PyPI's per-release pages cannot be
reached (a registry proxy, as on our CI machines), a pin that is its project's latest release is
checked against the project page instead, whose advisories are those of the latest release.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT_PAGE = "https://pypi.org/pypi/{name}/json"
# Advisories that do not reach the studio, each with why (SECURITY.md says more). Any alias of one
# is ignored with it.
NOT_REACHABLE = {
    # chromadb, no fixed release yet: all four are in Chroma's HTTP server (code injection through
    # its embedding-function endpoints, missing tenant checks). The studio runs Chroma embedded,
    # in its own process, with no server; a Chroma server you point it at is yours to keep on a
    # private network.
    "CVE-2026-45829": "Chroma server: code injection before authentication",
    "CVE-2026-45830": "Chroma server: no tenant authorization",
    "CVE-2026-45831": "Chroma server: RBAC provider ignores the resource",
    "CVE-2026-45833": "Chroma server: code injection after authentication",
}


def latest_release_advisories(dependency: dict, pins: dict[str, str]) -> dict:
    """pip-audit's entry for a pin it skipped, from the project page when the pin is the latest."""
    name = dependency["name"]
    version = pins.get(canonicalize_name(name), "")
    try:
        with urllib.request.urlopen(PROJECT_PAGE.format(name=name), timeout=20) as reply:  # noqa: S310
            page = json.load(reply)
    except (OSError, ValueError):
        return dependency
    if not version or page["info"]["version"] != version:
        return {**dependency, "version": version}  # an older pin: the page says nothing of it
    vulns = [
        {"id": v["id"], "aliases": v.get("aliases", []), "fix_versions": v.get("fixed_in", [])}
        for v in page.get("vulnerabilities", [])
        if not v.get("withdrawn")
    ]
    return {"name": name, "version": version, "vulns": vulns}


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
            print("Audit: NOT CHECKED (see above). Run `make audit` again with network access.")
            return 0
        dependencies = json.loads(report.read_text())["dependencies"]
    with ThreadPoolExecutor(16) as pool:
        dependencies = list(
            pool.map(
                lambda d: latest_release_advisories(d, pins) if "skip_reason" in d else d,
                dependencies,
            )
        )

    ignored = 0
    for dependency in dependencies:
        found = dependency.get("vulns", [])
        dependency["vulns"] = [
            v for v in found if not {v["id"], *v.get("aliases", [])} & NOT_REACHABLE.keys()
        ]
        ignored += len(found) - len(dependency["vulns"])
    vulnerable = [d for d in dependencies if d["vulns"]]
    unchecked = [d for d in dependencies if "skip_reason" in d]
    checked = len(dependencies) - len(unchecked)
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
        f"({ignored} more that do not reach the studio: see SECURITY.md)."
    )
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
