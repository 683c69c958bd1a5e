"""Scoring answers: normalisation, exact match, token F1, containment, bootstrap intervals."""

import pytest

from core.evaluation.metrics import bootstrap_mean, paired_difference, score
from core.text_match import contains, exact_match, normalise, token_f1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The 45-day period.", "45 day period"),
        ("  An   ANSWER, with (punctuation)! ", "answer with punctuation"),
        ("“Curly” quotes — and dashes…", "curly quotes and dashes"),
        ("Café \uff21\uff22\uff23", "café abc"),  # full-width letters fold to plain ones
        ("the", ""),
        ("£60 or €1,500", "£ 60 or € 1 500"),  # a currency sign is a word of its own
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_exact_match_ignores_case_punctuation_and_articles_and_takes_any_accepted() -> None:
    assert exact_match("The Paris.", ["paris"])
    assert exact_match("forty-five", ["45 days", "Forty five"])
    assert not exact_match("Paris, France", ["Paris"])
    assert not exact_match("anything", ["", "  "])  # blank accepted answers never match


def test_token_f1_is_the_best_overlap_over_accepted_answers() -> None:
    assert token_f1("45 days", ["45 days"]) == 1.0
    # 2 common words: precision 2/4, recall 2/2 -> F1 2/3
    assert token_f1("It is 45 days", ["45 days"]) == pytest.approx(2 / 3)
    assert token_f1("It is 45 days", ["sixty", "45 days"]) == pytest.approx(2 / 3)
    assert token_f1("nothing in common", ["45 days"]) == 0.0
    assert token_f1("", ["45 days"]) == 0.0
    # repeated words count as often as they occur in both
    assert token_f1("days days", ["days"]) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_containment_needs_whole_words() -> None:
    assert contains("Refunds are possible within 45 days of booking.", ["45 days"])
    assert contains("The code is blue-harbor-42", ["BLUE-HARBOR-42"])
    assert not contains("It costs 145 days", ["45 days"])  # not part of a longer number
    assert not contains("Parisian food", ["Paris"])
    assert not contains("anything", [""])


def test_an_amount_written_with_a_currency_sign_contains_its_number() -> None:
    assert contains("The Alpine Express takes bicycles for £60 each.", ["GBP 60", "60"])
    assert not contains("The Alpine Express takes bicycles for £600 each.", ["GBP 60", "60"])


def test_a_score_is_right_when_it_matches_or_contains_an_accepted_answer() -> None:
    assert score("The release code is BLUE-HARBOR-42.", ["BLUE-HARBOR-42"]).correct
    marks = score("Paris", ["Paris"])
    assert marks.exact and marks.contained and marks.f1 == 1.0
    assert not score("I do not know.", ["Paris"]).correct


def test_bootstrap_intervals_are_repeatable_with_a_seed_and_surround_the_mean() -> None:
    values = [1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1]
    first, again = bootstrap_mean(values, seed=7), bootstrap_mean(values, seed=7)
    assert first == again
    assert first.mean == pytest.approx(8 / 12)
    assert 0 <= first.low < first.mean < first.high <= 1
    f1s = [0.13, 0.52, 0.91, 0.37, 0.74, 0.21, 0.95, 0.48, 0.66, 0.05, 0.83, 0.29, 0.58, 0.1, 0.7]
    assert bootstrap_mean(f1s, seed=1) == bootstrap_mean(f1s, seed=1)
    assert bootstrap_mean(f1s, seed=1) != bootstrap_mean(f1s, seed=2)  # the seed is used
    # more questions with the same share: a narrower interval
    wide, narrow = bootstrap_mean([1, 0] * 5), bootstrap_mean([1, 0] * 100)
    assert narrow.high - narrow.low < wide.high - wide.low


def test_bootstrap_edge_cases() -> None:
    assert bootstrap_mean([]) == bootstrap_mean([], seed=3)
    assert bootstrap_mean([]).mean == 0.0
    single = bootstrap_mean([1.0])
    assert (single.low, single.mean, single.high) == (1.0, 1.0, 1.0)
    same = bootstrap_mean([0.5] * 6)
    assert (same.low, same.high) == (0.5, 0.5)


def test_paired_difference_tells_a_real_lead_from_chance() -> None:
    strong = paired_difference([1] * 18 + [0] * 2, [0] * 18 + [1] * 2)
    assert strong.low > 0
    weak = paired_difference([1, 1, 0, 1, 0], [1, 0, 1, 0, 0])
    assert weak.low <= 0 <= weak.high
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1, 0], [1])
