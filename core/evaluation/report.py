"""An evaluation as something to look at and to share: charts, tables, HTML and Markdown.

The charts are Altair (Vega-Lite) specifications: the page draws them, and the exports render
the same ones to SVG offline with vl-convert. Every text that came from a user, a document or a
model is escaped before it goes into HTML (Jinja2's autoescape) or Markdown.
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import altair as alt

from core.answering.modes import MODES
from core.evaluation.recommend import Recommendation, costs, recommend
from core.evaluation.results import REASONS, ModeSummary, Report, correctness, summarise
from core.evaluation.runner import QUESTIONS_PER_BATCH

_COLOURS = {"base": "#9aa0a6", "tuned": "#7b61ff", "rag": "#1a73e8", "hybrid": "#0b8043"}


@dataclass(frozen=True)
class Verdict:
    """Everything the page and the exports show about a report, computed once."""

    summaries: dict[str, ModeSummary]
    recommendation: Recommendation
    costs: list[str]


def verdict(report: Report) -> Verdict:
    summaries = summarise(report)
    rag = summaries.get("rag")
    hit_rate = rag.hit_rate.mean if rag and rag.hit_rate else None
    seconds = {mode: s.total_s for mode, s in summaries.items() if s.total_s}
    # Questions are answered QUESTIONS_PER_BATCH at a time, every mode of each together.
    batch = len(report.modes) * min(QUESTIONS_PER_BATCH, max(report.total, 1))
    note = f", {batch} answers generated together" if len(report.modes) > 1 else ""
    return Verdict(
        summaries,
        recommend(correctness(report), hit_rate),
        costs(report.costs, seconds, note),
    )


def mark(report_result: Any, mode: str) -> str:
    """'✓' or '✗ reason' for one answer in the per-question table."""
    if report_result.answers[mode].error:
        return "✗ no answer"
    reason = report_result.reasons.get(mode)
    if report_result.correct(mode):
        return f"✓ {REASONS[reason][0]}" if reason else "✓"
    return f"✗ {REASONS[reason][0]}"


def score_rows(summaries: dict[str, ModeSummary]) -> list[dict[str, Any]]:
    """The per-mode table: plain column names, percentages as numbers."""
    rows = []
    for mode, s in summaries.items():
        rows.append(
            {
                "Mode": MODES[mode].label,
                "Right": f"{s.correct} of {s.questions}",
                "Correct (%)": round(100 * s.accuracy.mean),
                "95% interval": f"{100 * s.accuracy.low:.0f}-{100 * s.accuracy.high:.0f}",
                "Token F1 (%)": round(100 * s.f1.mean),
                "Exact match (%)": round(100 * s.exact),
                "Answer retrieved (%)": (
                    round(100 * s.hit_rate.mean) if s.hit_rate is not None else None
                ),
                "First token (s)": round(s.time_to_first_token_s, 2),
                "Total (s)": round(s.total_s, 2),
                "Tokens": round(s.tokens),
            }
        )
    return rows


# -- charts --------------------------------------------------------------------------------------
def correctness_chart(summaries: dict[str, ModeSummary]) -> alt.LayerChart:
    data = alt.Data(
        values=[
            {
                "mode": MODES[m].label,
                "key": m,
                "correct": round(100 * s.accuracy.mean, 1),
                "low": round(100 * s.accuracy.low, 1),
                "high": round(100 * s.accuracy.high, 1),
            }
            for m, s in summaries.items()
        ]
    )
    order = [MODES[m].label for m in summaries]
    colour = alt.Color(
        "key:N",
        scale=alt.Scale(domain=list(summaries), range=[_COLOURS[m] for m in summaries]),
        legend=None,
    )
    base = alt.Chart(data).encode(
        x=alt.X("mode:N", sort=order, title=None, axis=alt.Axis(labelAngle=0))
    )
    bars = base.mark_bar(width={"band": 0.6}).encode(
        y=alt.Y("correct:Q", title="Answered correctly (%)", scale=alt.Scale(domain=[0, 100])),
        color=colour,
        tooltip=[
            alt.Tooltip("mode:N", title="Mode"),
            alt.Tooltip("correct:Q", title="Correct (%)"),
            alt.Tooltip("low:Q", title="95% interval from"),
            alt.Tooltip("high:Q", title="to"),
        ],
    )
    whiskers = base.mark_errorbar(ticks=True, color="#202124").encode(
        y=alt.Y("low:Q", title="Answered correctly (%)"), y2="high:Q"
    )
    return (bars + whiskers).properties(
        title="Correct answers per mode (bars: 95% intervals)", height=260, width=360
    )


def latency_chart(summaries: dict[str, ModeSummary]) -> alt.Chart:
    values = []
    for m, s in summaries.items():
        values.append({"mode": MODES[m].label, "what": "First token", "s": s.time_to_first_token_s})
        values.append({"mode": MODES[m].label, "what": "Whole answer", "s": s.total_s})
    return (
        alt.Chart(alt.Data(values=values))
        .mark_bar()
        .encode(
            y=alt.Y("mode:N", sort=[MODES[m].label for m in summaries], title=None),
            yOffset="what:N",
            x=alt.X("s:Q", title="Seconds (median)"),
            color=alt.Color(
                "what:N",
                scale=alt.Scale(range=["#1a73e8", "#aecbfa"]),
                legend=alt.Legend(title=None, orient="bottom"),
            ),
            tooltip=["mode:N", "what:N", alt.Tooltip("s:Q", format=".2f", title="Seconds")],
        )
        .properties(title="Time per answer", height=260, width=360)
    )


@cache
def _svg(spec: str) -> str:
    import vl_convert

    return str(vl_convert.vegalite_to_svg(spec))


def svg(chart: alt.TopLevelMixin) -> str:
    """The chart as SVG, drawn offline."""
    return _svg(chart.to_json())


# -- exports -------------------------------------------------------------------------------------
def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _facts(report: Report) -> list[tuple[str, str]]:
    facts = [("Model", report.model), ("Questions", f"{report.done} of {report.total}")]
    if report.adapter_name:
        facts.append(("Adapter", report.adapter_name))
    if report.knowledge_base:
        facts.append(("Knowledge base", report.knowledge_base))
    if report.source:
        facts.append(("Questions from", report.source))
    facts.append(("Longest answer", f"{report.params.get('max_new_tokens', '')} tokens"))
    return facts


def _md(text: str) -> str:
    """Text for a Markdown table cell: no HTML, no table breaks, one line."""
    return html.escape(" ".join(text.split())).replace("|", "\\|")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _title(report: Report) -> str:
    """'Evaluation: <name>', without saying it twice for the default names."""
    name = report.name or report.id
    return name if name.casefold().startswith("evaluation") else f"Evaluation: {name}"


def to_markdown(report: Report) -> str:
    found = verdict(report)
    rec = found.recommendation
    lines = [f"# {_md(_title(report))}", "", f"*{_when(report.created)}*", ""]
    lines += [f"- **{k}:** {_md(v)}" for k, v in _facts(report)]
    lines += ["", "## Recommendation", "", f"**{_md(rec.headline)}**", ""]
    lines += [f"- {_md(r)}" for r in rec.reasons]
    lines += [f"> {_md(c)}" for c in rec.cautions]
    if found.costs:
        lines += ["", "### Costs", ""] + [f"- {_md(c)}" for c in found.costs]
    if found.summaries:
        lines += ["", "## Scores", ""]
        rows = score_rows(found.summaries)
        header = list(rows[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [
            "| " + " | ".join("" if v is None else _md(str(v)) for v in row.values()) + " |"
            for row in rows
        ]
        for title, chart in (
            ("Correct answers per mode", correctness_chart(found.summaries)),
            ("Time per answer", latency_chart(found.summaries)),
        ):
            data = base64.b64encode(svg(chart).encode()).decode()
            lines += ["", f"![{title}](data:image/svg+xml;base64,{data})"]
    lines += ["", "## Questions", ""]
    labels = [MODES[m].label for m in report.modes]
    lines += [
        "| # | Question | Reference | " + " | ".join(labels) + " |",
        "|" + "---|" * (3 + len(labels)),
    ]
    for number, result in enumerate(report.results, 1):
        cells = [
            f"{mark(result, m)}<br>{_md(_short(result.answers[m].text or '-'))}"
            for m in report.modes
        ]
        lines.append(
            f"| {number} | {_md(result.question)} | {_md(result.reference)} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#202124}
h1{margin-bottom:.2rem} .muted{color:#5f6368}
.verdict{background:#e8f0fe;border-left:4px solid #1a73e8;padding:1rem 1.2rem;margin:1rem 0}
.verdict strong{font-size:1.15rem} .caution{background:#fef7e0;border-left:4px solid #f9ab00;
padding:.6rem 1rem;margin:.5rem 0} table{border-collapse:collapse;width:100%;margin:1rem 0}
th,td{border:1px solid #dadce0;padding:.4rem .5rem;text-align:left;vertical-align:top;
font-size:.9rem} th{background:#f1f3f4} .right{color:#0b8043;font-weight:600}
.wrong{color:#c5221f;font-weight:600} .charts{display:flex;flex-wrap:wrap;gap:2rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem} dt{font-weight:600}
</style></head><body>
<h1>{{ title }}</h1>
<p class="muted">{{ when }} · made with LoRA-RAG Studio</p>
<dl>{% for k, v in facts %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
<div class="verdict"><strong>{{ rec.headline }}</strong>
<ul>{% for r in rec.reasons %}<li>{{ r }}</li>{% endfor %}</ul></div>
{% for c in rec.cautions %}<div class="caution">{{ c }}</div>{% endfor %}
{% if costs %}<h2>Costs</h2><ul>{% for c in costs %}<li>{{ c }}</li>{% endfor %}</ul>{% endif %}
{% if rows %}<h2>Scores</h2>
<div class="charts">{% for chart in charts %}<div>{{ chart | safe }}</div>{% endfor %}</div>
<table><tr>{% for h in rows[0] %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for v in row.values() %}<td>{{ '' if v is none else v }}</td>
{% endfor %}</tr>{% endfor %}</table>{% endif %}
<h2>Questions</h2>
<table><tr><th>#</th><th>Question</th><th>Reference</th>
{% for label in labels %}<th>{{ label }}</th>{% endfor %}</tr>
{% for q in questions %}<tr><td>{{ loop.index }}</td><td>{{ q.question }}</td>
<td>{{ q.reference }}</td>{% for cell in q.cells %}<td><span
class="{{ 'right' if cell.right else 'wrong' }}">{{ cell.mark }}</span><br>{{ cell.text }}</td>
{% endfor %}</tr>{% endfor %}</table>
</body></html>
"""


@cache
def _template() -> Any:
    from jinja2 import Environment

    return Environment(autoescape=True).from_string(_HTML)


def to_html(report: Report) -> str:
    """A self-contained page (charts inline, no scripts, nothing fetched) to open or mail."""
    found = verdict(report)
    charts = (
        [svg(correctness_chart(found.summaries)), svg(latency_chart(found.summaries))]
        if found.summaries
        else []
    )
    questions = [
        {
            "question": r.question,
            "reference": r.reference,
            "cells": [
                {
                    "right": r.correct(m),
                    "mark": mark(r, m),
                    "text": r.answers[m].text or "-",
                }
                for m in report.modes
            ],
        }
        for r in report.results
    ]
    return str(
        _template().render(
            title=_title(report),
            when=_when(report.created),
            facts=_facts(report),
            rec=found.recommendation,
            costs=found.costs,
            rows=score_rows(found.summaries),
            charts=charts,
            labels=[MODES[m].label for m in report.modes],
            questions=questions,
        )
    )
