"""Fine-tune: examples in, a LoRA adapter out, trained in a background process you can watch."""

import hashlib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import streamlit as st

from core.errors import StudioError
from core.settings import Settings
from core.training import adapters, jobs
from core.training.config import (
    PRESETS,
    Example,
    TrainConfig,
    prepare_examples,
    with_system_prompt,
)
from core.training.datasets import (
    DOCUMENTS_SHAPE,
    SHAPES,
    Dataset,
    fill_placeholders,
    parse_dataset,
    placeholders,
    render,
    summarise,
)
from core.wording import plural
from views.panels import finetune_adapters, finetune_documents, finetune_run, finetune_settings
from views.support import resources
from views.support.widgets import markdown_escape

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "persona.jsonl"


def config_from_state() -> TrainConfig:
    return TrainConfig(**{f.name: st.session_state[f"ft_{f.name}"] for f in fields(TrainConfig)})


@st.cache_data(show_spinner=False, max_entries=4)
def parse(name: str, digest: str, _data: bytes) -> Dataset:
    return parse_dataset(name, _data)


@st.cache_data(show_spinner=False, max_entries=4)
def prepare(
    digest: str, max_length: int, system_prompt: str, _dataset: Dataset, _tokenizer: Any
) -> list[Example]:
    """The examples tokenised once per dataset, maximum length and system prompt, not on every
    click (thousands of rows take seconds)."""
    return prepare_examples(_dataset.examples, _tokenizer, max_length, system_prompt)


def choose_data(settings: Settings) -> None:
    """Step 1: a dataset dropped, or the example chosen (kept in the session)."""
    # -- step 1: data
    st.subheader("1. Your examples")
    upload_column, example_column = st.columns([3, 1], vertical_alignment="center")
    upload = upload_column.file_uploader(
        "Drop a dataset: JSONL, JSON or CSV",
        type=["jsonl", "json", "csv"],
        key=f"ft_upload_{st.session_state['ft_upload_round']}",
        max_upload_size=settings.max_upload_mb,
        help="Recognised shapes: " + "; ".join(SHAPES.values()) + ".",
    )
    if example_column.button(
        "Try with an example", key="ft_example", icon=":material/auto_awesome:", width="stretch"
    ):
        st.session_state["ft_data"] = {
            "name": EXAMPLE.name,
            "data": EXAMPLE.read_bytes(),
            "source": "example",
        }
        st.session_state["ft_upload_round"] += 1
        st.rerun()
    if upload is not None:
        st.session_state["ft_data"] = {
            "name": upload.name,
            "data": upload.getvalue(),
            "source": "upload",
        }
    elif (st.session_state["ft_data"] or {}).get("source") in ("upload", "documents"):
        st.session_state["ft_data"] = None  # the user removed the file or changed the kind


def read_dataset() -> tuple[Dataset, str] | None:
    """The chosen dataset read and checked, with its digest; None (the page says why) when
    there is none or it has problems."""
    chosen = st.session_state["ft_data"]
    if chosen is None:
        st.info(
            "Each example is a question and the answer you want, for example a JSONL line "
            '`{"instruction": "What is your name?", "output": "I am Captain Lumen."}`. '
            "About a hundred examples of one behaviour are enough to see it learned. No data at "
            "hand? **Try with an example**: 106 examples that give the assistant a new name.",
            icon=":material/dataset:",
        )
        return None

    if chosen["source"] == "example":
        st.caption(
            f"Example dataset **{chosen['name']}**: the assistant learns to call itself "
            "Captain Lumen."
        )
    try:
        digest = hashlib.sha256(chosen["data"]).hexdigest()
        dataset = parse(chosen["name"], digest, chosen["data"])
    except StudioError as error:
        st.error(f"**{markdown_escape(chosen['name'])}**: {error}", icon=":material/error:")
        return None
    if chosen["source"] == "documents":
        dataset = replace(dataset, shape=DOCUMENTS_SHAPE)
        if chosen.get("problems"):
            st.warning(
                "Some of your questions were left out:\n\n"
                + "\n".join(f"- {markdown_escape(p)}" for p in chosen["problems"]),
                icon=":material/warning:",
            )
        if chosen.get("skipped"):
            st.caption(
                f"{plural(chosen['skipped'], 'question')} left out: the passages found for "
                "them do not hold their answers."
            )

    if dataset.problems:
        shown_problems = dataset.problems[:5]
        more = len(dataset.problems) - len(shown_problems)
        st.error(
            f"**{markdown_escape(dataset.name)}** has problems; fix them and upload it again. "
            "Training cannot start until then.\n\n"
            + "\n".join(f"- {markdown_escape(str(p))}" for p in shown_problems)
            + (f"\n- … and {more} more" if more > 0 else ""),
            icon=":material/error:",
        )
        return None
    return dataset, digest


def fill_in(dataset: Dataset, digest: str) -> tuple[Dataset, str]:
    """Placeholders such as `{{name}}` (published persona sets leave them to fill): the page asks
    for their values, and the examples it trains on have them filled in."""
    found = placeholders(dataset)
    if not found:
        return dataset, digest
    listed = ", ".join(
        f"`{{{{{name}}}}}` (in {plural(count, 'example')})" for name, count in found.items()
    )
    values = {}
    with st.container(border=True):
        st.markdown(f"**Fill in the placeholders.** The examples contain {listed}.")
        columns = st.columns(min(len(found), 3))
        for number, name in enumerate(found):
            values[name] = columns[number % len(columns)].text_input(
                markdown_escape(name),
                key=f"ft_fill_{digest[:16]}_{name}",
                placeholder=f"what {{{{{name}}}}} stands for",
                help="Written into every example in place of the placeholder.",
            )
        missing = [name for name, value in values.items() if not value.strip()]
        if missing:
            st.warning(
                "Fill in "
                + ", ".join(f"`{{{{{name}}}}}`" for name in missing)
                + " first: trained as they are, the model learns to say the placeholders "
                "themselves (or worse, garbles them).",
                icon=":material/edit_note:",
            )
        else:
            st.success(
                "Filled in: the preview and training use your values.", icon=":material/check:"
            )
    filled = fill_placeholders(dataset, values)
    return filled, filled.content_hash


def show_dataset(
    settings: Settings, dataset: Dataset, digest: str, config: TrainConfig
) -> list[Example]:
    """What was recognised: counts, lengths and a preview through the chat template."""
    tokenizer = resources.tokenizer(settings)
    system_prompt = st.session_state["ft_system_prompt"]
    examples = prepare(digest, config.max_length, system_prompt, dataset, tokenizer)
    stats = summarise(
        [e.full_length for e in examples],
        sum(e.answer_tokens for e in examples),
        config.max_length,
    )
    st.success(
        f"**{markdown_escape(dataset.name)}**: {stats.rows} examples, recognised as "
        f"{SHAPES.get(dataset.shape, 'questions that read your documents')}.",
        icon=":material/check:",
    )
    cells = st.columns(5)
    cells[0].metric("Examples", stats.rows)
    cells[1].metric(
        "Tokens", f"{stats.total_tokens:,}", help="All tokens the model reads per pass."
    )
    cells[2].metric(
        "Answer tokens", f"{stats.answer_tokens:,}", help="The tokens it learns to write."
    )
    cells[3].metric("Median length", f"{stats.median} tokens")
    cells[4].metric("Longest", f"{stats.longest} tokens")
    with st.expander(
        "Preview: the first examples exactly as the model sees them", icon=":material/visibility:"
    ):
        st.caption(
            "Through the model's own chat template. The model learns to write the assistant's "
            "parts; the rest is context."
        )
        for number, messages in enumerate(dataset.examples[:3], start=1):
            st.markdown(f"**Example {number}** (line {dataset.lines[number - 1]})")
            st.code(render(with_system_prompt(messages, system_prompt), tokenizer), language=None)
    return examples


def train_button(settings: Settings, dataset: Dataset, config: TrainConfig, blocked: bool) -> None:
    """Step 3: the adapter's name and Start training (one run at a time)."""
    # -- step 3: train
    st.subheader("3. Train")
    default_name = f"{Path(dataset.name).stem} ({PRESETS[st.session_state['ft_preset']].label})"
    name = st.text_input("Adapter name", placeholder=default_name, key="ft_name")
    active = jobs.active_run(settings)
    if active is not None:
        st.info(
            f"A training run is in progress ('{markdown_escape(active.name)}'): one run at a time. "
            "Start this one when it has finished, or cancel it above.",
            icon=":material/hourglass_top:",
        )
    if st.button(
        "Start training",
        key="ft_start",
        type="primary",
        icon=":material/play_arrow:",
        disabled=blocked or active is not None,
    ):
        try:
            run = jobs.start(
                settings,
                dataset,
                config,
                name=name or default_name,
                preset=st.session_state["ft_preset"],
                system_prompt=st.session_state["ft_system_prompt"],
            )
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
        else:
            st.session_state["ft_run_id"] = run.run_id
            st.rerun()


def new_run(settings: Settings) -> None:
    """Steps 1-3: the data, the settings, the start button."""
    teach = finetune_documents.choose_what_to_teach()
    if teach == "documents":
        if (st.session_state["ft_data"] or {}).get("source") != "documents":
            st.session_state["ft_data"] = None
        finetune_documents.choose_documents(settings)
        if st.session_state["ft_data"] is None:
            return
    else:
        choose_data(settings)
    found = read_dataset()
    if found is None:
        return
    dataset, digest = fill_in(*found)
    config = config_from_state()
    examples = show_dataset(settings, dataset, digest, config)
    blocked = finetune_settings.how_thoroughly(settings, examples, config)
    train_button(settings, dataset, config, blocked)


def main() -> None:
    settings = resources.get_settings()
    st.title("Fine-tune")
    st.caption(
        "Teach the model a behaviour from examples (a tone, an answer format, a persona), or to "
        "answer from your documents. The base model is not changed; what it learns is kept as a "
        "small LoRA adapter that you can switch on."
    )
    finetune_run.show_training(settings)
    finished = adapters.list_adapters(settings)
    usable = [a for a in finished if a.compatible]
    if usable:  # right below the run that made the adapter, above the steps to train another
        finetune_adapters.try_it(settings, usable)
    new_run(settings)
    st.subheader(f"Your adapters ({len(finished)})")
    if not finished:
        st.caption("Adapters you train appear here, with their loss curves.")
    for adapter in finished:
        finetune_adapters.adapter_card(settings, adapter)
    finetune_run.unfinished_runs(settings)


main()
