"""What a server loads once and every browser session shares: the settings (a demo's bundle
opened), the chat model, the search model and the knowledge store, each with progress while it
loads and a plain message, never a stack trace, when it cannot."""

from __future__ import annotations

import gc
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import streamlit as st

from core.errors import StudioError
from core.knowledge import adding, repair
from core.knowledge.store import KnowledgeStore
from core.memory import release_freed_memory
from core.model import loading, remote
from core.model.chat import ChatModel
from core.model.local import HFChatModel
from core.model.remote import RemoteChatModel
from core.settings import Settings, load_settings
from core.sharing import demo
from core.training import adapters
from core.training.adapters import AdapterInfo
from views.support.widgets import markdown_escape


@st.cache_resource(show_spinner=False)
def _settings() -> Settings:
    settings = load_settings()
    # Demo mode: the bundle is checked and unpacked once, then presented read-only.
    return demo.open_demo(settings) if settings.demo_bundle else settings


def get_settings() -> Settings:
    """The studio's settings, read once per server; a bad value stops the page with a message."""
    try:
        with st.spinner("Opening the studio…"):
            return _settings()
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/settings:")
        st.stop()


@st.cache_resource(show_spinner=False)
def _device_text(device_setting: str) -> str:
    return loading.describe_device(loading.resolve_device(device_setting))


def device_text(settings: Settings) -> str:
    """Where models run, for example 'CPU (2 cores)'."""
    return _device_text(settings.device)


def dtype_text(settings: Settings) -> str:
    """The weights' number format, for example 'bfloat16'."""
    dtype = loading.resolve_dtype(settings.dtype, loading.resolve_device(settings.device))
    return str(dtype).removeprefix("torch.")


# What the loaded chat model's answers read (core.model.weights), by model, once it is loaded.
_decoding: dict[str, str] = {}


def weights_text(settings: Settings) -> str:
    """The number format of the weights in plain words, for example 'int4 for answers (as the
    model file stores them), bfloat16 for fine-tuning'."""
    dtype = dtype_text(settings)
    packed = _decoding.get(settings.base_model) or _expected_packing(settings, dtype)
    if not packed:
        return dtype
    why = {
        "int4": "as the model file stores them",
        "int8": "about twice as fast, within a fraction of a percent",
    }
    kind = packed.split(" + ")[0]
    return f"{kind} for answers ({why.get(kind, 'packed')}), {dtype} for fine-tuning"


def _expected_packing(settings: Settings, dtype: str) -> str:
    """What core.model.weights will pack, told from the settings and the model file alone."""
    if settings.engine_url or settings.decode_weights == "full" or dtype != "bfloat16":
        return ""
    if loading.resolve_device(settings.device) != "cpu":
        return ""
    if settings.decode_weights == "auto":
        path = loading.describe_model(settings.base_model, settings).path
        if path is not None and path.suffix == ".gguf" and ".Q4_" in path.name:
            return "int4"
    return "int8"


@st.cache_data(ttl=10, show_spinner=False)
def _engine_text(engine_url: str | None, _settings: Settings) -> str:
    return remote.server_status(_settings)


def engine_text(settings: Settings) -> str:
    """Which engine answers and whether it is ready, asked again at most every 10 s."""
    with st.spinner("Asking the answer engine…"):
        return _engine_text(settings.engine_url, settings)


def build_chat_model(settings: Settings) -> ChatModel:
    if settings.engine_url:  # a serving engine answers; only the tokenizer is needed here
        return RemoteChatModel(
            settings,
            loading.load_tokenizer(settings),
            loading.describe_model(settings.base_model, settings).display_name,
        )
    chat = HFChatModel(
        loading.load_chat_model(settings),
        context_window=settings.context_window,
        max_batch=settings.max_batch,
        max_waiting=settings.max_waiting,
        weights=settings.decode_weights,
    )
    _decoding[settings.base_model] = chat.decoding.info.text
    return chat


@st.cache_resource(show_spinner=False, max_entries=1)
def _shared_chat_model(
    base_model: str,
    device: str,
    context_window: int | None,
    engine_url: str | None,
    _settings: Settings,
) -> ChatModel:
    # One copy per server, shared by every browser session; the arguments are the cache key.
    return settled(build_chat_model(_settings))


def settled(resource: Any) -> Any:
    """`resource`, loaded for the life of the server, moved with everything else loaded so far
    out of the garbage collector's reach (gc.freeze): its full collections then scan the few
    objects a page makes instead of a model's hundreds of thousands, which took 0.7-1.2 s with
    the GIL held. The cost: a model dropped later frees only what reference counting frees."""
    gc.collect()
    gc.freeze()
    release_freed_memory()  # what loading it needed for a moment goes back to the system
    return resource


def _prepare_with_progress(settings: Settings) -> None:
    """Convert or download the model once, with a bar that keeps moving meanwhile."""
    latest = {"fraction": 0.0, "message": "Starting", "since": time.monotonic()}

    def report(fraction: float, message: str) -> None:
        latest.update(fraction=fraction, message=message, since=time.monotonic())

    with st.status("Preparing the model for its first use…", expanded=True) as status:
        st.write("This happens once; later starts take about a second.")
        bar = st.progress(0.0)
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=1) as pool:
            job = pool.submit(loading.prepare_model, settings.base_model, settings, report)
            while not job.done():
                now = time.monotonic()
                # Stages report rarely; creep toward the next one so the bar never looks stuck.
                fraction = float(latest["fraction"])
                creep = (1 - math.exp(-(now - float(latest["since"])) / 8)) * 0.25 * (1 - fraction)
                bar.progress(
                    min(fraction + creep, 0.99), text=f"{latest['message']} · {now - start:.0f} s"
                )
                time.sleep(0.5)
            job.result()
        bar.progress(1.0, text="Model ready")
        status.update(label="Model ready", state="complete", expanded=False)


def ensure_model_ready(settings: Settings) -> None:
    """Convert or download the base model once (with progress); on a problem, a message and a
    stop."""
    try:
        if not loading.describe_model(settings.base_model, settings).ready:
            _prepare_with_progress(settings)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        st.stop()


def tokenizer(settings: Settings) -> Any:
    """The base model's tokenizer (no weights), for dataset statistics and previews."""
    ensure_model_ready(settings)
    try:
        return loading.load_tokenizer(settings)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        st.stop()


def chat_model(settings: Settings) -> ChatModel:
    """The shared chat model; on a problem, a plain message and the page stops."""
    try:
        ensure_model_ready(settings)
        with st.spinner("Loading the model…"):
            return _shared_chat_model(
                settings.base_model,
                settings.device,
                settings.context_window,
                settings.engine_url,
                settings,
            )
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=1)
def _shared_embeddings(embedding_model: str, device: str, _settings: Settings) -> Any:
    return settled(loading.load_embeddings(_settings))


def knowledge_store(settings: Settings) -> KnowledgeStore:
    """All knowledge bases, with the shared search model; on a problem, a message and a stop."""
    try:
        with st.spinner("Loading the search model…"):
            embeddings = _shared_embeddings(settings.embedding_model, settings.device, settings)
        store = KnowledgeStore(settings, embeddings)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        st.stop()
    _repair_knowledge(store)
    adding.resume(store)  # documents a stopped studio was adding: picked up again here
    return store


_repair_lock = threading.Lock()
_repaired: dict[str, list[str]] = {}  # data folder -> what the repair found, once per process


def _repair_knowledge(store: KnowledgeStore) -> None:
    """Once per server: rebuild knowledge bases whose search index is damaged or gone, from
    their stored original files, with progress; every visitor is told once what happened."""
    key = str(store.settings.data_dir)
    if key not in _repaired:
        with st.spinner("Checking the knowledge bases…"), _repair_lock:
            if key not in _repaired:
                _repaired[key] = _run_repair(store)
    seen = f"repair_seen_{key}"
    if _repaired[key] and not st.session_state.get(seen):
        st.session_state[seen] = True
        for line in _repaired[key]:
            st.warning(line, icon=":material/build:")


def _run_repair(store: KnowledgeStore) -> list[str]:
    """core.knowledge.repair with a status box and a bar per rebuilt knowledge base."""
    lines: list[str] = []
    status: Any = None
    bar: Any = None
    for event in repair.repair(store):
        if isinstance(event, repair.Rebuilding):
            shown = markdown_escape(event.name)
            status = st.status(f"Rebuilding the search index of '{shown}'…", expanded=True)
            with status:
                bar = st.progress(0.0)
        elif isinstance(event, repair.Progress):
            bar.progress(event.event.fraction, text=markdown_escape(event.event.message))
        else:
            if event.kind == "rebuilt" and status is not None:
                label = f"Rebuilt '{markdown_escape(event.name)}'"
                status.update(label=label, state="complete", expanded=False)
            lines.append(finding_text(event))
    return lines


def finding_text(finding: repair.Finding) -> str:
    """A repair's finding in plain words."""
    shown = markdown_escape(finding.name)
    if finding.kind == "set_aside":
        return (
            "The knowledge bases' search index was damaged (the disk filled up, or the studio was "
            f"stopped mid-write?). It was set aside in '{markdown_escape(finding.folder)}' and "
            "rebuilt from your documents."
        )
    if finding.kind == "incomplete":
        return f"The search index of '{shown}' is incomplete: searches may miss things."
    lost = ", ".join(map(markdown_escape, finding.lost))
    return (
        f"The search index of '{shown}' was damaged or missing; it has been rebuilt from your "
        f"stored files ({finding.redone} of {finding.total} documents)."
        + (f" Could not rebuild: {lost}." if lost else "")
    )


def sidebar(settings: Settings) -> None:
    """The sidebar under the page list: a demo's notice, the model and where it runs."""
    with st.sidebar:
        if settings.read_only:
            st.info(
                "A read-only demo: ask and compare, nothing can be changed.",
                icon=":material/visibility:",
            )
        try:
            source = loading.describe_model(settings.base_model, settings)
            where = (
                "on a serving engine" if settings.engine_url else device_text(settings)
            )  # the engine's address is on Home
            st.caption(f"Model: **{markdown_escape(source.display_name)}** · {where}")
        except StudioError:
            st.caption("Model: not available (see Home)")


@dataclass
class Studio:
    """What a page works with: the settings, the knowledge store, the adapters this base model
    can use and the knowledge bases, read once per run of the page."""

    settings: Settings
    store: KnowledgeStore
    adapters: list[AdapterInfo]
    kb_names: list[str]

    @property
    def by_adapter(self) -> dict[str, AdapterInfo]:
        return {a.run_id: a for a in self.adapters}


def studio(settings: Settings) -> Studio:
    store = knowledge_store(settings)
    usable = [a for a in adapters.list_adapters(settings) if a.compatible]
    return Studio(settings, store, usable, store.names())
