from core.ingest import ChunkSettings, UploadedFile, ingest
from core.retrieve import dense_search, keyword_tokens, search
from tests.documents import pdf_bytes


def filled(knowledge):
    kb = knowledge.create("Search")
    files = [
        UploadedFile(
            "handbook.pdf",
            pdf_bytes(
                [
                    "Welcome to the handbook.",
                    "The release code is BLUE-HARBOR-42.",
                    "Parking is free.",
                ]
            ),
        ),
        UploadedFile("faq.txt", b"Refunds are possible within 45 days of purchase."),
    ]
    list(ingest(kb, files, ChunkSettings(200, 20)))
    return kb


def test_keywords_find_exact_codes_with_file_and_page(knowledge) -> None:
    kb = filled(knowledge)
    result = search(kb, "What is the release code BLUE-HARBOR-42?", top_k=3)
    # The fake embeddings rank at random, so the keyword hit is near the top rather than first.
    best = next(p for p in result.passages[:2] if "BLUE-HARBOR-42" in p.text)
    assert (best.source, best.page, best.citation) == ("handbook.pdf", 2, "handbook.pdf, page 2")
    assert "keywords" in best.found_by
    assert result.seconds >= 0 and len(result.passages) == 3


def test_fused_scores_are_ordered_and_passages_unique(knowledge) -> None:
    kb = filled(knowledge)
    passages = search(kb, "refunds within 45 days", top_k=4).passages
    scores = [p.score for p in passages]
    assert scores == sorted(scores, reverse=True)
    assert len({(p.doc_id, p.passage) for p in passages}) == len(passages)
    assert passages[0].citation == "faq.txt"  # no page for a text file
    assert all(p.similarity is None or -1.0 <= p.similarity <= 1.0 for p in passages)


def test_the_same_passage_from_both_searches_counts_once_with_both_reasons(knowledge) -> None:
    kb = filled(knowledge)
    exact = "The release code is BLUE-HARBOR-42."  # fake embeddings match identical text
    best = search(kb, exact, top_k=1).passages[0]
    assert best.found_by == ("meaning", "keywords")
    assert best.similarity is not None and best.similarity > 0.99


def test_empty_query_or_empty_knowledge_base_gives_nothing(knowledge) -> None:
    kb = knowledge.create("Empty")
    assert search(kb, "anything").passages == []
    assert search(filled(knowledge), "   ").passages == []


def test_keyword_index_follows_changes(knowledge) -> None:
    kb = filled(knowledge)
    assert any("Parking" in p.text for p in search(kb, "parking", top_k=4).passages)
    handbook = next(d for d in kb.documents() if d.name == "handbook.pdf")
    kb.delete_document(handbook.doc_id)
    assert all("Parking" not in p.text for p in search(kb, "parking", top_k=4).passages)


def test_dense_only_baseline_returns_k(knowledge) -> None:
    assert len(dense_search(filled(knowledge), "release code", top_k=2)) == 2


def test_keyword_tokens_are_case_and_punctuation_blind() -> None:
    assert keyword_tokens("Release-Code: BLUE_HARBOR 42!") == [
        "release",
        "code",
        "blue_harbor",
        "42",
    ]
