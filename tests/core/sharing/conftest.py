"""The sharing tests' studio: a knowledge base, an adapter, a conversation and a report."""

import pytest

from core.knowledge.store import KnowledgeStore
from core.settings import Settings
from tests.support.sharing import fill


@pytest.fixture
def studio(settings: Settings, knowledge: KnowledgeStore) -> dict:
    """A studio with a knowledge base, an adapter, a conversation and an evaluation report."""
    return fill(settings, knowledge.embeddings)
