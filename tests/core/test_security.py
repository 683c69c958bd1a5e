"""The minimum versions SECURITY.md promises are the ones pyproject.toml asks for and we run."""

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

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
