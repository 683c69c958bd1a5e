import pytest

from core.errors import KnowledgeBaseError
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore, slug


def add(kb, name: str, text: str) -> None:
    list(ingest(kb, [UploadedFile(name, text.encode())], ChunkSettings(200, 20)))


def test_create_list_open_and_delete(knowledge: KnowledgeStore) -> None:
    assert knowledge.names() == []
    knowledge.create("HR policies")
    knowledge.create("a")
    assert knowledge.names() == ["a", "HR policies"]
    kb = knowledge.open("HR policies")
    assert kb.name == "HR policies" and kb.embedding_model == knowledge.settings.embedding_model
    add(kb, "x.txt", "Some text.")
    knowledge.delete("HR policies")
    assert knowledge.names() == ["a"]
    with pytest.raises(KnowledgeBaseError, match="no knowledge base called 'HR policies'"):
        knowledge.open("HR policies")
    again = knowledge.create("HR policies")  # the name is free again, and starts empty
    assert again.passage_count() == 0 and again.documents() == []


@pytest.mark.parametrize("name", ["", "   ", "../etc", "x" * 65, "semi;colon", "-dash-first"])
def test_bad_names_are_refused(knowledge: KnowledgeStore, name: str) -> None:
    with pytest.raises(KnowledgeBaseError, match="1 to 64 characters"):
        knowledge.create(name)


def test_duplicate_names_are_refused_whatever_the_case(knowledge: KnowledgeStore) -> None:
    knowledge.create("Manuals")
    with pytest.raises(KnowledgeBaseError, match="already exists"):
        knowledge.create("manuals")


def test_collection_names_are_valid_for_chroma() -> None:
    for name in ["a", "HR policies", "Überblick 2024", "x" * 64, "a.b_c-d"]:
        value = slug(name)
        assert 3 <= len(value) <= 512
        assert value[0].isalnum() and value[-1].isalnum()
        assert all(c.isalnum() or c in "._-" for c in value)


def test_a_different_embedding_model_is_refused_plainly(knowledge: KnowledgeStore) -> None:
    knowledge.create("Vectors")
    other = KnowledgeStore(
        knowledge.settings.model_copy(update={"embedding_model": "/models/other"}),
        knowledge.embeddings,
    )
    with pytest.raises(KnowledgeBaseError, match="built with the search model") as caught:
        other.open("Vectors")
    assert "LRS_EMBEDDING_MODEL" in str(caught.value)


def test_knowledge_bases_are_kept_apart(knowledge: KnowledgeStore) -> None:
    first, second = knowledge.create("One"), knowledge.create("Two")
    add(first, "a.txt", "Only in the first one.")
    assert first.passage_count() == 1 and second.passage_count() == 0


def test_deleting_a_document_takes_its_passages_and_file(knowledge: KnowledgeStore) -> None:
    kb = knowledge.create("Delete")
    add(kb, "keep.txt", "This one stays.")
    add(kb, "drop.txt", "This one goes. " * 30)
    drop = next(d for d in kb.documents() if d.name == "drop.txt")
    kb.delete_document(drop.doc_id)
    assert [d.name for d in kb.documents()] == ["keep.txt"]
    assert kb.store.get(include=["documents"])["documents"] == ["This one stays."]
    assert not kb.original_path(drop).exists()
    with pytest.raises(KnowledgeBaseError, match="no longer in the knowledge base"):
        kb.delete_document(drop.doc_id)


def test_the_studio_restarting_finds_its_knowledge_bases(knowledge: KnowledgeStore) -> None:
    add(knowledge.create("Persist"), "a.txt", "Survives a restart.")
    fresh = KnowledgeStore(knowledge.settings, knowledge.embeddings)
    kb = fresh.open("Persist")
    assert [d.name for d in kb.documents()] == ["a.txt"] and kb.passage_count() == 1


def test_sessions_opening_the_store_at_the_same_moment_all_get_a_working_client(tmp_path) -> None:
    # Chroma registers a new embedded store before starting it: without our lock, 14 of 40 such
    # calls failed with "'RustBindingsAPI' object has no attribute 'bindings'".
    from concurrent.futures import ThreadPoolExecutor

    from core.knowledge.chroma import chroma_client

    def open_store(_: int) -> list:
        return chroma_client(str(tmp_path / "chroma")).list_collections()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(open_store, range(8))) == [[]] * 8
