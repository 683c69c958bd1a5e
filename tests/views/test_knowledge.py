from core.knowledge import adding
from core.settings import load_settings
from tests.support.documents import docx_bytes, pdf_bytes, png_bytes
from tests.support.restart import restart_studio
from tests.views.conftest import texts

PAGE = "views/knowledge.py"
PDF = pdf_bytes(["Welcome page.", "The release code is BLUE-HARBOR-42.", "Parking is free."])


def create(at, name: str = "Harbor"):
    at.text_input(key="kb_first_name").set_value(name)
    at.button(key="kb_first_create").click().run()
    return at


def upload(at, *files):
    uploader = at.file_uploader[0]
    uploader.set_value([(name, data, "application/octet-stream") for name, data in files]).run()
    at.button(key="kb_add").click().run()
    return finish_adding(at)


def finish_adding(at):
    """The page once the documents it handed to the background have all been added."""
    settings = load_settings()
    for job in adding.jobs_for(settings, at.selectbox(key="kb_selected").value):
        assert not adding.alive(adding.wait(settings, job.id, timeout_s=60)), job
    return at.run()


def test_empty_studio_invites_to_create_a_knowledge_base(open_page, fake_search) -> None:
    at = open_page(PAGE)
    assert not at.exception
    assert "Create a knowledge base to start" in at.info[0].value
    create(at, "Harbor")
    assert not at.exception
    assert at.selectbox(key="kb_selected").value == "Harbor"
    assert at.button(key="kb_add").disabled  # nothing to add yet


def test_a_second_knowledge_base_is_created_and_chosen(open_page, fake_search) -> None:
    at = create(open_page(PAGE), "First")
    at.text_input(key="kb_new_name").set_value("Second")
    at.button(key="kb_new_create").click().run()
    assert not at.exception
    assert at.selectbox(key="kb_selected").value == "Second"
    assert at.selectbox(key="kb_selected").options == ["First", "Second"]


def test_a_bad_name_is_explained(open_page, fake_search) -> None:
    at = create(open_page(PAGE), "../../etc")
    assert "1 to 64 characters" in at.error[0].value


def test_upload_see_the_table_search_and_delete(open_page, fake_search) -> None:
    at = create(open_page(PAGE))
    upload(
        at,
        ("handbook.pdf", PDF),
        ("boats.docx", docx_bytes(["Mooring costs 12 euros a night."])),
        ("photo.pdf", png_bytes()),
    )
    assert not at.exception
    assert [texts([s]) for s in at.success] == [
        "**handbook.pdf**: Added 3 passages from 3 pages.",
        "**boats.docx**: Added 1 passage.",
    ]
    assert "not a PDF" in at.error[0].value
    table = at.dataframe[0].value
    assert list(table["Name"]) == ["handbook.pdf", "boats.docx"]
    assert list(table["Passages"]) == [3, 1] and list(table["Pages"]) == ["3", ""]

    at.text_input(key="kb_query").set_value("release code BLUE-HARBOR-42").run()
    shown = " ".join(m.value for m in at.markdown)
    assert "handbook\\.pdf, page 2" in shown and "BLUE\\-HARBOR\\-42" in shown

    at.selectbox(key="kb_doc_to_delete").set_value("handbook.pdf (3 passages)")
    at.button(key="kb_doc_delete").click().run()
    assert list(at.dataframe[0].value["Name"]) == ["boats.docx"]


def test_the_same_upload_twice_says_already_present(open_page, fake_search) -> None:
    at = create(open_page(PAGE))
    upload(at, ("handbook.pdf", PDF))
    upload(at, ("handbook.pdf", PDF))
    assert "Already in the knowledge base" in at.success[0].value
    assert len(at.dataframe[0].value) == 1


def test_deleting_a_knowledge_base_needs_confirmation(open_page, fake_search) -> None:
    at = create(open_page(PAGE))
    assert at.button(key="kb_delete").disabled
    at.checkbox(key="kb_delete_confirm_Harbor").check().run()
    at.button(key="kb_delete").click().run()
    assert not at.exception
    assert "Create a knowledge base to start" in at.info[0].value


def test_document_text_is_never_rendered_as_html(open_page, fake_search) -> None:
    at = create(open_page(PAGE))
    upload(at, ("evil.md", b"<img src=x onerror=alert(1)> **bold** [link](http://x)"))
    at.text_input(key="kb_query").set_value("img onerror").run()
    passage = [m.value for m in at.markdown if "onerror" in m.value][-1]
    assert "\\<img" in passage and "\\*\\*bold\\*\\*" in passage and "\\[link\\]" in passage


def test_a_damaged_search_index_is_rebuilt_at_start_and_the_page_says_so(
    open_page, fake_search, studio_env
) -> None:
    upload(create(open_page(PAGE)), ("handbook.pdf", PDF))
    restart_studio()  # the studio stops, its search index is damaged, it starts again
    (studio_env / "data" / "chroma" / "chroma.sqlite3").write_bytes(b"not a database" * 1000)

    at = open_page(PAGE)
    assert not at.exception
    said = " ".join(w.value for w in at.warning).replace("\\", "")  # without Markdown escapes
    assert "search index was damaged" in said and "chroma-damaged-" in said
    assert "rebuilt from your stored files (1 of 1 documents)" in said
    at.text_input(key="kb_query").set_value("release code BLUE-HARBOR-42").run()
    assert not at.exception
    shown = " ".join(m.value for m in at.markdown)
    assert "handbook\\.pdf, page 2" in shown and "BLUE\\-HARBOR\\-42" in shown
    assert not [w for w in at.warning if "damaged" in w.value]  # told once, not at every click
