"""The evaluation tests' material: a small handbook, four questions and a fake model that
answers them the way each mode would."""

import re

from core.answering.modes import is_reading
from core.evaluation import runner
from core.evaluation.questions import EvalItem
from core.evaluation.results import Report
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.model.chat import ChatRequest, SamplingParams
from tests.support.fakes import FakeChatModel

DOCUMENT = (
    b"The release code is BLUE-HARBOR-42.\n\nRefunds are possible within 45 days of the booking."
)
ITEMS = [
    EvalItem("What is the release code?", "BLUE-HARBOR-42"),
    EvalItem("How long is the refund period?", "45 days"),
    EvalItem("What is the capital of France?", "Paris"),
    EvalItem("Who is the harbour master?", "Ingrid Solberg"),
]
PARAMS = SamplingParams(temperature=0.0, max_new_tokens=32)


def oracle(request: ChatRequest) -> str:
    """A model that knows Paris, reads codes (not periods) from passages, and, with the
    adapter, has learned the harbour master but forgotten Paris."""
    content = request.messages[-1]["content"]
    if is_reading(content):  # it reads, and knows nothing else while reading
        code = re.search(r"code is ([A-Z]+-[A-Z]+-\d+)", content)
        return f"The release code is {code.group(1)} [1]." if code else "The text does not say."
    if request.adapter is not None:
        return "The harbour master is Ingrid Solberg." if "master" in content else "No idea."
    return "Paris." if "France" in content else "I do not know."


def harbour(knowledge):  # type: ignore[no-untyped-def]
    """The knowledge base 'Harbour' with the handbook in it."""
    base = knowledge.create("Harbour")
    list(ingest(base, [UploadedFile("handbook.txt", DOCUMENT)], ChunkSettings(200, 20)))
    return base


def new(settings, kb, adapter=None, items=ITEMS) -> Report:
    return runner.new_report(
        settings, FakeChatModel([oracle]), items, adapter=adapter, kb=kb, params=PARAMS
    )
