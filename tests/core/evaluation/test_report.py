"""Exported reports: the verdict, charts and table, with model text escaped."""

import html

from core.evaluation import report, results, runner
from core.model.chat import ChatRequest
from tests.support.evaluation import ITEMS, new
from tests.support.fakes import FakeChatModel


def test_exports_carry_the_verdict_charts_and_table_and_escape_model_text(settings, kb) -> None:
    def hostile(request: ChatRequest) -> str:
        return "<script>alert(1)</script> | BLUE-HARBOR-42"

    shown = new(settings, kb, items=ITEMS[:2])
    runner.run(settings, FakeChatModel([hostile]), shown, kb)
    page = report.to_html(shown)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<svg") == 2  # correctness and latency, drawn inline
    verdict = report.verdict(shown).recommendation
    assert verdict.choice == "base"  # the hostile model names the code in every mode
    assert html.escape(verdict.headline) in page and "Only 2 questions" in page
    assert "✓" in page and "✗ retrieved but not used" in page
    text = report.to_markdown(shown)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "\\| BLUE-HARBOR-42" in text  # a pipe in an answer does not break the table
    assert text.count("data:image/svg+xml;base64,") == 2
    assert "| # | Question | Reference | Base model | RAG |" in text
    rows = report.score_rows(results.summarise(shown))
    assert [r["Mode"] for r in rows] == ["Base model", "RAG"]
    assert rows[1]["Right"] == "1 of 2" and rows[1]["Answer retrieved (%)"] == 100
