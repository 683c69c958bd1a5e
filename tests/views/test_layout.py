"""The shape of the UI code: no `pages/` folder, every page a `main()` called at the bottom, the
session's keys made in one place, and core packages that import downwards only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "views").glob("*.py"))
# A package may import itself, the base modules and the packages listed (lower in the layers).
LAYERS = {
    "model": set(),
    "knowledge": {"model"},
    "training": {"model"},
    "answering": {"model", "knowledge", "training"},
    "evaluation": {"model", "knowledge", "training", "answering"},
    "sharing": {"model", "knowledge", "training", "answering", "evaluation"},
}


def test_no_pages_folder_beside_app_py() -> None:
    """A folder named `pages` beside app.py puts Streamlit in its legacy multipage mode: a
    deep link would run that page without app.py, without the password gate (README)."""
    assert not (ROOT / "pages").exists()


def test_every_page_is_a_main_called_at_the_bottom() -> None:
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign)
    for path in [*PAGES, ROOT / "app.py"]:
        if path.name == "__init__.py":
            continue
        body = ast.parse(path.read_text()).body
        last = body[-1]
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call), path.name
        assert getattr(last.value.func, "id", "") == "main", path.name
        for node in body[:-1]:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            assert isinstance(node, (*allowed, ast.AnnAssign)), (path.name, node.lineno)
            if isinstance(node, (ast.Assign, ast.AnnAssign)):  # constants: no Streamlit at import
                value = node.value or ast.Constant(None)
                names = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
                assert not names & {"st", "resources", "widgets", "state"}, (path.name, node.lineno)


def test_pages_and_their_helpers_stay_small() -> None:
    for path in [*PAGES, *(ROOT / "views" / "panels").glob("*.py")]:
        assert len(path.read_text().splitlines()) <= 350, path.name


def test_every_session_key_a_page_reads_is_made_in_one_place() -> None:
    """Keys read with st.session_state["..."] exist from the start: views/support/state.py
    makes them (keys that belong to a widget are made by the widget, with its `key=`)."""
    state = (ROOT / "views" / "support" / "state.py").read_text()
    made = set(re.findall(r'"(\w+)":', state))
    made |= {
        f"{page}_{name}"
        for page in ("chat", "arena")
        for name in ("system_prompt", "temperature", "top_p", "max_new_tokens")
    }
    code = "\n".join(p.read_text() for p in (ROOT / "views").rglob("*.py"))
    widget_keys = set(re.findall(r'key="(\w+)"', code))
    widget_keys |= set(re.findall(r'_picker\(\s*\w+,\s*[\w.]+,\s*"(\w+)"', code))
    read = set(re.findall(r'st\.session_state\["(\w+)"\]', code))
    read |= set(re.findall(r'st\.session_state\.(?:get|pop)\("(\w+)"', code))
    assert read - made - widget_keys == set()


def test_core_packages_import_downwards_only() -> None:
    for package, below in LAYERS.items():
        for path in (ROOT / "core" / package).glob("*.py"):
            imported = re.findall(r"^\s*(?:from|import) core\.(\w+)", path.read_text(), re.M)
            packages = {name for name in imported if name in LAYERS}
            assert packages <= below | {package}, (path.name, packages - below - {package})


def test_the_base_modules_import_no_package() -> None:
    for path in (ROOT / "core").glob("*.py"):
        imported = set(re.findall(r"^\s*(?:from|import) core\.(\w+)", path.read_text(), re.M))
        assert not imported & set(LAYERS), path.name
