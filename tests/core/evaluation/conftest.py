"""The evaluation tests' knowledge base."""

import pytest

from tests.support.evaluation import harbour


@pytest.fixture
def kb(knowledge):  # type: ignore[no-untyped-def]
    return harbour(knowledge)
