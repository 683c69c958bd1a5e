from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.retrieve import dense_search, keyword_tokens, search
from tests.support.documents import pdf_bytes


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


def test_the_keyword_index_is_built_once_per_revision_and_shared_by_threads(knowledge) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from core.knowledge import retrieve

    kb = filled(knowledge)
    first = retrieve.keyword_index(kb)
    assert retrieve.keyword_index(knowledge.open("Search")) is first  # another session, same one
    with ThreadPoolExecutor(4) as pool:  # searches at once, with other sizes, share it unchanged
        found = list(pool.map(lambda k: [d.id for d in first.top("release code", k)], [1, 5] * 8))
    assert all(ids == found[0] for ids in found[::2]) and all(
        ids == found[1] for ids in found[1::2]
    )
    assert len(found[0]) == 1
    list(ingest(kb, [UploadedFile("new.txt", b"The ferry leaves at noon.")], ChunkSettings()))
    second = retrieve.keyword_index(kb)
    assert second is not first and any("ferry" in d.page_content for d in second.documents)
    here = (kb.settings.data_dir.as_posix(), kb.collection_name)
    kept = [key for key in retrieve._bm25_cache if key[:2] == here]
    assert len(kept) == 1  # the older revision's index is dropped


def test_a_knowledge_base_made_again_under_its_old_name_gets_a_new_index(knowledge) -> None:
    from core.knowledge import retrieve

    kb = filled(knowledge)
    old = retrieve.keyword_index(kb)
    knowledge.delete("Search")
    again = knowledge.create("Search")
    list(ingest(again, [UploadedFile("other.txt", b"Only this.")], ChunkSettings()))
    list(ingest(again, [UploadedFile("more.txt", b"And this.")], ChunkSettings()))
    assert retrieve.keyword_index(again) is not old
    assert [d.page_content for d in retrieve.keyword_index(again).top("this", 5)]
