"""The Share page and demo mode through app.py, with a fake chat model and fake embeddings."""

from pathlib import Path

import pytest

from core.answering import conversations
from core.evaluation import runner
from core.knowledge.store import KnowledgeStore
from core.settings import load_settings
from core.sharing import demo as sharing_demo
from core.sharing import export
from core.sharing.bundle import read_bundle
from core.training import adapters
from tests.support.sharing import fill
from tests.views.conftest import texts

PAGE = "views/share.py"


def bundle_from_elsewhere(tmp_path: Path, embeddings) -> Path:
    """A demo file exported by another studio (same models as the one under test)."""
    source = load_settings(data_dir=tmp_path / "elsewhere")
    fill(source, embeddings)
    store = KnowledgeStore(source, embeddings)
    choice = export.ExportChoice(
        knowledge_bases=store.names(),
        adapters=[a.run_id for a in adapters.list_adapters(source)],
        evaluations=[r.id for r in runner.list_reports(source)],
    )
    return export.export_bundle(source, store, choice, tmp_path / "demo.zip")


def test_with_nothing_built_the_page_says_so(open_page, fake_search) -> None:
    at = open_page(PAGE)
    assert not at.exception
    assert "Nothing to share yet" in texts(at.info)
    assert len(at.file_uploader) == 1  # importing is always possible
    assert "No saved evaluation or conversation yet." in texts(at.info)


def test_export_builds_a_valid_demo_file_with_what_was_chosen(
    open_page, fake_model, fake_search
) -> None:
    settings = load_settings()
    fill(settings, fake_search)
    at = open_page(PAGE)
    assert at.multiselect(key="share_kbs").value == ["Harbour"]
    assert len(at.multiselect(key="share_adapters").value) == 1
    at.multiselect(key="share_reports").set_value([]).run()
    at.button(key="share_build").click().run()
    assert not at.exception
    built = Path(at.session_state["share_bundle"])
    assert built.is_file() and built.parent == settings.data_dir / "exports"
    assert "is ready" in texts(at.success)
    assert at.get("download_button")
    bundle = read_bundle(built.read_bytes(), 10**9)
    assert [k.name for k in bundle.knowledge_bases] == ["Harbour"]
    assert [a.name for a in bundle.adapters] == ["Harbour voice"]
    assert bundle.evaluations == []  # unticked
    # the links tab lists the saved report with its own link
    assert any("/evaluate?report=" in c.value for c in at.code)


def test_import_shows_the_plan_then_imports_under_new_names_when_taken(
    open_page, fake_model, fake_search, tmp_path
) -> None:
    demo = bundle_from_elsewhere(tmp_path, fake_search)
    settings = load_settings()
    KnowledgeStore(settings, fake_search).create("Harbour")  # the name is taken here
    at = open_page(PAGE)
    at.file_uploader[0].set_value([("demo.zip", demo.read_bytes(), "application/zip")]).run()
    assert not at.exception
    plan = at.table[0].value
    assert [n.replace("\\", "") for n in plan["Name here"]] == [
        "Harbour - imported",
        "Harbour voice",
    ]
    assert "Already here: knowledge base 'Harbour'" in texts(at.warning)
    assert at.checkbox(key="share_replace").value is False
    at.button(key="share_import").click().run()
    assert not at.exception
    assert "Imported 1 knowledge bases, 1 adapters, 1 evaluation reports" in texts(at.success)
    store = KnowledgeStore(settings, fake_search)
    assert store.names() == ["Harbour", "Harbour - imported"]
    assert store.open("Harbour").passage_count() == 0  # the one that was here is untouched
    assert [a.name for a in adapters.list_adapters(settings)] == ["Harbour voice"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip at all", "not a complete zip"),
        (None, "no manifest.json"),
    ],
)
def test_a_bad_file_is_refused_with_a_message_and_nothing_imported(
    open_page, fake_search, data, message
) -> None:
    import io
    import zipfile

    if data is None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("readme.txt", "hello")
        data = buffer.getvalue()
    at = open_page(PAGE)
    at.file_uploader[0].set_value([("demo.zip", data, "application/zip")]).run()
    assert not at.exception
    assert message in texts(at.error)
    assert "share_import" not in [b.key for b in at.button]
    assert KnowledgeStore(load_settings(), fake_search).names() == []


# -- demo mode -------------------------------------------------------------------------------------
@pytest.fixture
def demo_env(monkeypatch, tmp_path, studio_env, fake_search) -> Path:
    demo = bundle_from_elsewhere(tmp_path, fake_search)
    monkeypatch.setenv("LRS_DEMO_BUNDLE", str(demo))
    return demo


def test_demo_mode_offers_asking_and_reading_but_no_changes(
    open_page, demo_env, fake_model
) -> None:
    at = open_page()
    assert not at.exception
    assert "This is a demo" in texts(at.subheader)
    assert "read-only demo" in texts(at.sidebar.info)
    for page in ("views/finetune.py", PAGE):
        with pytest.raises(Exception, match=r"(?i)page"):
            open_page(page)

    at = open_page("views/knowledge.py")
    assert not at.exception
    assert len(at.file_uploader) == 0 and "kb_add" not in [b.key for b in at.button]
    assert "kb_delete" not in [b.key for b in at.button]
    at.text_input(key="kb_query").set_value("release code").run()
    assert "BLUE-HARBOR-42" in texts(at.markdown).replace("\\", "")

    at = open_page("views/evaluate.py")
    assert not at.exception
    assert "Open one of the saved evaluations" in texts(at.info)
    (report,) = [k for k in (b.key for b in at.button) if k.startswith("eval_open_")]
    assert not [b for b in at.button if b.key.startswith("eval_delete_")]
    at.button(key=report).click().run()
    assert at.subheader[0].value == "Harbour check"
    assert "eval_new" not in [b.key for b in at.button]
    assert "eval_fresh_run" not in [b.key for b in at.button]

    settings = sharing_demo.open_demo(load_settings())
    at = open_page("views/arena.py")
    assert not [t for t in at.toggle if t.key == "arena_blind"]
    at.chat_input(key="arena_input").set_value("What is the release code?").run()
    assert not at.exception
    assert fake_model.requests  # answered...
    saved = conversations.arena_dir(settings) / "conversations"
    assert not saved.exists() or not list(saved.iterdir())  # ...and not saved


def test_a_demo_password_is_asked_before_anything_is_shown(
    open_page, demo_env, monkeypatch
) -> None:
    monkeypatch.setenv("LRS_DEMO_PASSWORD", "harbour-2026")
    at = open_page()
    assert not at.exception
    assert "protected by a password" in texts(at.markdown)
    assert "This is a demo" not in texts(at.subheader)
    at.text_input(key="access_password").set_value("wrong")
    at.button[0].click().run()  # the form's submit button
    assert "That password is not right." in texts(at.error)
    assert "This is a demo" not in texts(at.subheader)
    at.text_input(key="access_password").set_value("harbour-2026")
    at.button[0].click().run()
    assert not at.exception
    assert "This is a demo" in texts(at.subheader)


def test_wrong_passwords_make_the_next_try_wait_longer_and_nothing_keeps_the_typed_value(
    open_page, demo_env, monkeypatch
) -> None:
    from views.support import access

    now = [1000.0]
    monkeypatch.setattr(access, "clock", lambda: now[0])
    monkeypatch.setattr(access, "_failures", {})
    monkeypatch.setenv("LRS_DEMO_PASSWORD", "harbour-2026")

    def attempt(at, password: str):  # type: ignore[no-untyped-def]
        at.text_input(key="access_password").set_value(password)
        at.button[0].click().run()
        assert not at.exception
        state = at.session_state  # AppTest's session state has no .get
        typed = state["access_password"] if "access_password" in state else ""  # noqa: SIM401
        assert typed == ""
        return at

    at = open_page()
    for _ in range(access.FREE_TRIES - 1):
        assert "That password is not right." in texts(attempt(at, "wrong").error)
    (client,) = access._failures  # the tries are counted per client, not per session
    assert access.password_wait_s(client) == 0
    attempt(at, "wrong")
    assert access.password_wait_s(client) == 1.0
    # A new session (a new tab, a reload) of the same client gets no fresh tries...
    fresh = open_page()
    attempt(fresh, "harbour-2026")
    assert "Too many wrong passwords" in texts(fresh.error)
    assert "This is a demo" not in texts(fresh.subheader)
    # ...the wait doubles with each further wrong password...
    now[0] += 1.0
    attempt(fresh, "wrong again")
    assert access.password_wait_s(client) == 2.0
    # ...and once it has passed, the right password opens the studio and forgets the tries.
    now[0] += 2.0
    attempt(fresh, "harbour-2026")
    assert "This is a demo" in texts(fresh.subheader)
    assert access._failures == {}


def test_with_an_identity_provider_in_secrets_visitors_log_in_first(studio_env, demo_env) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.views.conftest import APP

    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "not-a-real-secret",
        "client_id": "demo",
        "client_secret": "demo",
        "server_metadata_url": "https://id.example.org/.well-known/openid-configuration",
    }
    at.run()
    assert not at.exception
    assert "Log in to open this studio." in texts(at.info)
    assert at.button(key="access_login").label == "Log in"
    assert "This is a demo" not in texts(at.subheader)


def test_a_password_in_secrets_protects_the_full_studio_too(studio_env) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.views.conftest import APP

    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["demo_password"] = "from-secrets"
    at.run()
    assert "protected by a password" in texts(at.markdown)
    at.text_input(key="access_password").set_value("from-secrets")
    at.button[0].click().run()
    assert not at.exception
    assert "Start here" in texts(at.subheader)


def test_links_open_a_saved_report_and_a_saved_conversation(
    open_page, fake_model, fake_search
) -> None:
    made = fill(load_settings(), fake_search)
    at = open_page("views/evaluate.py")
    at.query_params["report"] = made["report"]
    at.run()
    assert not at.exception
    assert at.subheader[0].value == "Harbour check"
    at.query_params["report"] = "nosuchreport"
    at.run()
    assert "The evaluation in this link was not found." in texts(at.warning)

    at = open_page("views/arena.py")
    at.query_params["conversation"] = made["conversation"]
    at.run()
    assert not at.exception
    assert at.session_state["arena_conversation"].id == made["conversation"]
    assert "What is the code?" in texts(at.markdown)
    assert "BLUE-HARBOR-42" in texts(at.markdown).replace("\\", "")
    at.query_params["conversation"] = "nosuchconversation"
    at.run()
    assert "The conversation in this link was not found." in texts(at.warning)
