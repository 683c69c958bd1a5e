"""The recommendation on crafted score tables: each verdict, its reasons and its cautions."""

from core.evaluation.recommend import costs, recommend


def marks(right: int, total: int = 30) -> list[bool]:
    return [True] * right + [False] * (total - right)


def spread(right: int, total: int = 30, offset: int = 0) -> list[bool]:
    """`right` correct answers spread over the questions, starting at `offset`."""
    chosen = {(offset + i * total // max(right, 1)) % total for i in range(right)}
    return [i in chosen for i in range(total)]


def test_rag_clearly_best() -> None:
    found = recommend(
        {"base": marks(2), "tuned": marks(3), "rag": marks(24), "hybrid": marks(22)}, hit_rate=0.9
    )
    assert found.choice == "rag"
    assert found.headline.startswith("RAG answered 24 of 30 correctly, the tuned model 3 of 30")
    assert "use RAG" in found.headline
    assert found.reasons[0] == "RAG answered 24 of 30 correctly."
    assert found.cautions == []


def test_lora_clearly_best() -> None:
    found = recommend({"base": marks(4), "tuned": marks(25), "rag": marks(6), "hybrid": marks(24)})
    assert found.choice == "lora"
    assert found.headline.startswith("The tuned model answered 25 of 30 correctly, RAG 6 of 30")
    assert "use the fine-tuned model" in found.headline


def test_hybrid_best() -> None:
    found = recommend(
        {"base": marks(3), "tuned": marks(12), "rag": marks(14), "hybrid": marks(28)}, 0.95
    )
    assert found.choice == "both"
    assert "so use both" in found.headline
    assert "Fine-tuned + RAG answered 28 of 30" in found.headline


def test_no_clear_winner_when_the_lead_could_be_chance() -> None:
    found = recommend({"base": spread(1, 12), "tuned": spread(8, 12, 1), "rag": spread(9, 12, 2)})
    assert found.choice == "unclear"
    assert found.headline.startswith(
        "No clear winner: RAG answered 9 of 12 correctly and the tuned model 8 of 12"
    )
    assert found.headline.endswith("until then RAG is the better bet.")
    assert "Add questions" in found.headline
    assert any("Only 12 questions" in c for c in found.cautions)


def test_equal_modes_are_no_winner_and_the_cheaper_one_leads() -> None:
    found = recommend({"rag": marks(5, 10), "tuned": marks(5, 10)})
    assert found.choice == "unclear"
    assert found.headline == (
        "No clear winner: RAG answered 5 of 10 correctly, and so did the tuned model. With "
        "equal scores, the simpler one will do: RAG."
    )


def test_the_base_model_already_knows() -> None:
    found = recommend({"base": marks(27), "rag": marks(28), "tuned": marks(26)})
    assert found.choice == "base"
    assert "neither RAG nor fine-tuning" in found.headline


def test_nothing_right_and_nothing_to_compare() -> None:
    assert recommend({"base": marks(0), "rag": marks(0)}).choice == "none"
    assert recommend({}).choice == "none"
    assert recommend({"base": []}).choice == "none"


def test_only_rag_against_base() -> None:
    found = recommend({"base": marks(1, 12), "rag": marks(11, 12)}, hit_rate=1.0)
    assert found.choice == "rag"
    assert "the base model 1 of 12" in found.headline


def test_poor_retrieval_is_pointed_out() -> None:
    found = recommend({"base": marks(2), "rag": marks(4), "tuned": marks(20)}, hit_rate=0.2)
    assert found.choice == "lora"
    assert any("only 20%" in c for c in found.cautions)


def test_costs_are_plain_sentences() -> None:
    lines = costs(
        {
            "training_s": 250,
            "adapter_bytes": 9_800_000,
            "kb_passages": 120,
            "kb_documents": 3,
            "kb_bytes": 2_100_000,
        },
        {"base": 1.2, "rag": 2.04},
        ", 8 answers generated together",
    )
    assert lines[0] == (
        "Fine-tuning: training took 4 min; the adapter is 9.8 MB and must be trained again when "
        "the facts change."
    )
    assert "120 passages from 3 documents (2.1 MB)" in lines[1]
    assert lines[2] == (
        "Time per answer (median, 8 answers generated together): Base model 1.2 s, RAG 2.0 s."
    )
    assert costs({}, {}) == []


def test_with_fewer_than_five_questions_no_lead_is_called_a_win() -> None:
    found = recommend({"base": [False] * 3, "rag": [True] * 3})
    assert found.choice == "unclear"
    assert found.headline.startswith("No clear winner: RAG answered 3 of 3 correctly")
    assert "until then RAG is the better bet" in found.headline
    assert recommend({"base": [False] * 5, "rag": [True] * 5}).choice == "rag"
