"""Typed parsing of what comes from outside: wrong types are refused with a plain message."""

from dataclasses import dataclass, field

import pytest

from core.errors import InvalidInputError
from core.typed import parse


@dataclass
class Inner:
    score: float


@dataclass
class Outer:
    name: str
    items: list[Inner] = field(default_factory=list)


def test_good_data_becomes_the_typed_object() -> None:
    found = parse(Outer, {"name": "x", "items": [{"score": 0.5}]}, "A report")
    assert found == Outer("x", [Inner(0.5)])


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"name": ["not", "text"]}, "'name'"),
        ({"name": "x", "items": [{"score": "high"}]}, "'items.0.score'"),
        ("a string", "'the top level'"),
    ],
)
def test_a_wrong_type_is_named_in_plain_words(data: object, where: str) -> None:
    with pytest.raises(InvalidInputError, match=f"A report cannot be read: {where}"):
        parse(Outer, data, "A report")
