"""Identifiers that become file names: only lower-case letters and digits pass."""

import pytest

from core.errors import InvalidInputError
from core.ids import check_id, is_id, new_id


def test_new_ids_are_safe_and_different() -> None:
    made = {new_id() for _ in range(200)}
    assert len(made) == 200 and all(is_id(i) for i in made)


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "A1", "x.json", "c:", "a" * 65, None, 42])
def test_anything_that_could_become_a_path_is_refused(bad: object) -> None:
    assert not is_id(bad)
    with pytest.raises(InvalidInputError, match="not a saved report"):
        check_id(bad, "report")


def test_a_good_id_passes_as_it_is() -> None:
    assert check_id("abc123", "report") == "abc123"
