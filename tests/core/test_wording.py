"""Plain words for durations and counts."""

from core.wording import format_duration, plural, short_duration


def test_durations_read_plainly() -> None:
    assert format_duration(42) == "42 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(3 * 3600 + 120) == "3 h 02 min"
    assert short_duration(42) == "42 s" and short_duration(125) == "2 min"
    assert short_duration(3 * 3600 + 120) == "3 h 02"
    assert short_duration(-5) == "0 s"  # a clock that went back shows nothing negative


def test_counts_take_their_plural() -> None:
    assert plural(1, "document") == "1 document"
    assert [plural(n, "passage") for n in (0, 2)] == ["0 passages", "2 passages"]
