"""Streamlit helpers shared by the pages: settings, session state, the sidebar, cached models.

Not a page itself: app.py lists the pages (views/*.py) explicitly.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import streamlit as st

from core import adding, knowledge, models, share
from core.arena import MODES
from core.errors import StudioError
from core.generate import ChatModel, ChatStream, HFChatModel, SamplingParams
from core.ingest import ChunkSettings, rebuild
from core.knowledge import KnowledgeStore
from core.settings import Settings, load_settings
from core.train import PRESETS


@st.cache_resource(show_spinner=False)
def _settings() -> Settings:
    settings = load_settings()
    # Demo mode: the bundle is checked and unpacked once, then presented read-only.
    return share.open_demo(settings) if settings.demo_bundle else settings


def get_settings() -> Settings:
    """The studio's settings, read once per server; a bad value stops the page with a message."""
    try:
        with st.spinner("Opening the studio…"):
            return _settings()
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/settings:")
        st.stop()


def _secret(name: str) -> Any:
    """A value from Streamlit's secrets.toml, or None (also when there is no such file)."""
    try:
        return st.secrets.get(name)
    except Exception:  # no secrets file, or one that does not parse: treated as no secret
        return None


def _password(settings: Settings) -> str:
    """The studio's password ('' for none): LRS_DEMO_PASSWORD, else secrets' demo_password."""
    if settings.demo_password:
        return settings.demo_password.get_secret_value()
    return str(_secret("demo_password") or "")


def _must_log_in() -> bool:
    return bool(_secret("auth")) and not st.user.get("is_logged_in")


def locked(settings: Settings) -> bool:
    """Whether this browser session still has to log in or give the studio's password."""
    return _must_log_in() or (
        bool(_password(settings)) and not st.session_state.get("access_granted")
    )


# Wrong passwords per client (its address as the server sees it), shared by all its sessions: a
# new tab or a reload gets no fresh tries. After FREE_TRIES, each further wrong password doubles
# the wait before the next one may be tried, up to MAX_WAIT_S.
FREE_TRIES = 3
MAX_WAIT_S = 300.0
_failures: dict[str, tuple[int, float]] = {}  # client -> (wrong tries, may try again at)
_failures_lock = threading.Lock()
clock = time.monotonic


def _client() -> str:
    try:
        address = st.context.ip_address
    except Exception:  # outside a browser session: one shared client
        address = None
    try:
        return str(ipaddress.ip_address(str(address)))
    except ValueError:  # none, or not an address (a test harness's stand-in)
        return "unknown"


def password_wait_s(client: str) -> float:
    """How long `client` must still wait before its next try (0: it may try now)."""
    with _failures_lock:
        _, until = _failures.get(client, (0, 0.0))
    return max(until - clock(), 0.0)


def _record_try(client: str, right: bool) -> None:
    with _failures_lock:
        if right:
            _failures.pop(client, None)
            return
        tries = _failures.get(client, (0, 0.0))[0] + 1
        wait = 0.0 if tries < FREE_TRIES else min(2.0 ** (tries - FREE_TRIES), MAX_WAIT_S)
        _failures[client] = (tries, clock() + wait)


def access_gate(settings: Settings) -> None:
    """Ask for a login (Streamlit's st.login, when an identity provider is configured in
    secrets.toml) and the studio's password (LRS_DEMO_PASSWORD or secrets' demo_password)."""
    if not locked(settings):
        return
    st.title("LoRA-RAG Studio")
    if _must_log_in():
        st.info("Log in to open this studio.", icon=":material/lock:")
        st.button("Log in", key="access_login", icon=":material/login:", on_click=st.login)
        st.stop()
    # clear_on_submit: the typed password does not stay in the box or in session state.
    with st.columns([2, 3])[0], st.form("access_form", border=True, clear_on_submit=True):
        st.markdown("This studio is protected by a password.")
        given = st.text_input("Password", type="password", key="access_password")
        opened = st.form_submit_button("Open", icon=":material/lock_open:", type="primary")
    client = _client()
    if opened:
        st.session_state.pop("access_password", None)
        wait = password_wait_s(client)
        if wait > 0:
            st.error(
                f"Too many wrong passwords: try again in {math.ceil(wait)} seconds.",
                icon=":material/timer:",
            )
            st.stop()
        right = hmac.compare_digest(given.encode(), _password(settings).encode())
        _record_try(client, right)
        if right:
            st.session_state["access_granted"] = True
            st.rerun()
        st.error("That password is not right.", icon=":material/error:")
        wait = password_wait_s(client)
        if wait > 0:
            st.caption(
                f"Too many wrong passwords: the next try is possible in {math.ceil(wait)} s."
            )
    st.stop()


def init_state(settings: Settings) -> None:
    """Per-user UI state, all initialised here."""
    defaults = {
        "chat_messages": [],
        **{
            f"{page}_{name}": getattr(settings, name)
            for page in ("chat", "arena")
            for name in ("system_prompt", "temperature", "top_p", "max_new_tokens")
        },
        "arena_conversation": None,  # core.arena.Conversation
        "arena_modes": list(MODES),
        "arena_blind": False,
        "eval_items": [],  # {"question", "reference", "accepted"} rows, before they are edited
        "eval_source": "",
        "eval_round": 0,  # bumped when new questions arrive: a fresh editor and uploader
        "eval_problems": [],
        "eval_source_choice": "upload",
        "eval_generate_count": 10,
        "eval_max_new_tokens": 96,
        "eval_name": "",
        "eval_report_id": None,  # the evaluation shown
        "share_upload_round": 0,  # bumped after an import: a fresh, empty uploader
        "share_bundle": None,  # path of the demo file built in this session
        "share_imported": None,  # core.share.ImportResult of the last import
        "kb_chunk_size": settings.chunk_size,
        "kb_chunk_overlap": settings.chunk_overlap,
        "kb_top_k": settings.top_k,
        "kb_upload_round": 0,  # bumped after an upload, which gives the uploader a fresh key
        "kb_seen_jobs": [],  # document jobs this session started or watched: their outcome shows
        "kb_hidden_jobs": [],  # document jobs whose outcome this session put away
        "kb_watching": False,  # a document job was running at the last look
        "ft_data": None,  # {"name", "data", "source"} of the dataset being prepared
        "ft_upload_round": 0,
        "ft_preset": "quick",
        "ft_system_prompt": settings.system_prompt,
        "ft_run_id": None,  # the run started in this session
        **{f"ft_{name}": value for name, value in asdict(PRESETS["quick"].config).items()},
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def help_for(field: str) -> str:
    """The plain-language help text of a setting, shown beside its widget."""
    return Settings.model_fields[field].description or ""


@st.cache_resource(show_spinner=False)
def _device_text(device_setting: str) -> str:
    return models.describe_device(models.resolve_device(device_setting))


def device_text(settings: Settings) -> str:
    """Where models run, for example 'CPU (2 cores)'."""
    return _device_text(settings.device)


def dtype_text(settings: Settings) -> str:
    """The weights' number format, for example 'bfloat16'."""
    dtype = models.resolve_dtype(settings.dtype, models.resolve_device(settings.device))
    return str(dtype).removeprefix("torch.")


def sidebar() -> None:
    settings = get_settings()
    init_state(settings)
    with st.sidebar:
        if settings.read_only:
            st.info(
                "A read-only demo: ask and compare, nothing can be changed.",
                icon=":material/visibility:",
            )
        try:
            source = models.describe_model(settings.base_model, settings)
            st.caption(
                f"Model: **{markdown_escape(source.display_name)}** · {device_text(settings)}"
            )
        except StudioError:
            st.caption("Model: not available (see Home)")


def build_chat_model(settings: Settings) -> ChatModel:
    return HFChatModel(models.load_chat_model(settings), context_window=settings.context_window)


@st.cache_resource(show_spinner=False, max_entries=1)
def _shared_chat_model(
    base_model: str, device: str, context_window: int | None, _settings: Settings
) -> ChatModel:
    # One copy per server, shared by every browser session; the arguments are the cache key.
    return build_chat_model(_settings)


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
            job = pool.submit(models.prepare_model, settings.base_model, settings, report)
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
        if not models.describe_model(settings.base_model, settings).ready:
            _prepare_with_progress(settings)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        st.stop()


def tokenizer(settings: Settings) -> Any:
    """The base model's tokenizer (no weights), for dataset statistics and previews."""
    ensure_model_ready(settings)
    try:
        return models.load_tokenizer(settings)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        st.stop()


def chat_model(settings: Settings) -> ChatModel:
    """The shared chat model; on a problem, a plain message and the page stops."""
    try:
        ensure_model_ready(settings)
        with st.spinner("Loading the model…"):
            return _shared_chat_model(
                settings.base_model, settings.device, settings.context_window, settings
            )
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=1)
def _shared_embeddings(embedding_model: str, device: str, _settings: Settings) -> Any:
    return models.load_embeddings(_settings)


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
                _repaired[key] = _rebuild_damaged(store)
    seen = f"repair_seen_{key}"
    if _repaired[key] and not st.session_state.get(seen):
        st.session_state[seen] = True
        for line in _repaired[key]:
            st.warning(line, icon=":material/build:")


def _rebuild_damaged(store: KnowledgeStore) -> list[str]:
    found: list[str] = []
    for name in store.names():
        shown = markdown_escape(name)
        try:
            kb = store.open(name)  # opening the first one opens Chroma, or sets a damaged one aside
            missing = kb.missing_passages()
        except StudioError:
            continue  # the page that opens it says why
        if not missing:
            continue
        if store.settings.read_only:
            found.append(f"The search index of '{shown}' is incomplete: searches may miss things.")
            continue
        chunking = ChunkSettings.from_settings(store.settings)
        with st.status(f"Rebuilding the search index of '{shown}'…", expanded=True) as status:
            bar = st.progress(0.0)
            events = []
            for event in rebuild(kb, chunking):
                bar.progress(event.fraction, text=markdown_escape(event.message))
                if event.status in ("redone", "failed"):
                    events.append(event)
            redone = sum(e.status == "redone" for e in events)
            status.update(label=f"Rebuilt '{shown}'", state="complete", expanded=False)
        lost = [e.file_name for e in events if e.status == "failed"]
        found.append(
            f"The search index of '{shown}' was damaged or missing; it has been rebuilt from your "
            f"stored files ({redone} of {len(events)} documents)."
            + (f" Could not rebuild: {', '.join(map(markdown_escape, lost))}." if lost else "")
        )
    aside = knowledge.set_aside.get(knowledge.chroma_path(store.settings))
    if aside:
        found.insert(
            0,
            "The knowledge bases' search index was damaged (the disk filled up, or the studio was "
            f"stopped mid-write?). It was set aside in '{markdown_escape(str(aside))}' and rebuilt "
            "from your documents.",
        )
    return found


def markdown_escape(value: object) -> str:
    """The one way to show words from users, documents and bundles (file and adapter names,
    document text, any message that may quote them, an error included) in an element that
    renders Markdown: literally, with no formatting, links, images or HTML from them."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", str(value))


# A model's answer is shown as Markdown (never HTML), but a Markdown image loads its address as
# soon as it is shown: a document that tells the model to answer with ![](https://…?q=secret)
# would leak through the reader's browser. A zero-width space after "!" leaves a plain link.
_IMAGE = re.compile(r"!(?=\[)")


def answer_markdown(text: str) -> str:
    """A model's answer as Markdown that cannot load images (see _IMAGE)."""
    return _IMAGE.sub("!\u200b", text)


def answer_pieces(pieces: Iterable[str]) -> Iterator[str]:
    """answer_markdown for an answer arriving in pieces ("!" may end one, "[" start the next)."""
    after_bang = False
    for piece in pieces:
        if after_bang and piece.startswith("["):
            piece = "\u200b" + piece
        after_bang = piece.endswith("!")
        yield answer_markdown(piece)


def answer_settings(page: str) -> None:
    """The decoding settings of a page (`chat`, `arena`), in an expander."""
    with st.expander("Answer settings", icon=":material/tune:"):
        st.text_area(
            "System prompt",
            key=f"{page}_system_prompt",
            help=help_for("system_prompt"),
            height=80,
        )
        left, middle, right = st.columns(3)
        left.slider(
            "Temperature",
            0.0,
            1.5,
            step=0.05,
            key=f"{page}_temperature",
            help=help_for("temperature"),
        )
        middle.slider("Top-p", 0.05, 1.0, step=0.05, key=f"{page}_top_p", help=help_for("top_p"))
        right.number_input(
            "Longest answer (tokens)",
            min_value=16,
            max_value=2048,
            step=16,
            key=f"{page}_max_new_tokens",
            help=help_for("max_new_tokens"),
        )


def sampling_params(page: str = "chat") -> SamplingParams:
    return SamplingParams(
        temperature=float(st.session_state[f"{page}_temperature"]),
        top_p=float(st.session_state[f"{page}_top_p"]),
        max_new_tokens=int(st.session_state[f"{page}_max_new_tokens"]),
    )


def stream_side_by_side(slots: list[Any], streams: list[ChatStream]) -> list[str]:
    """Show several answers growing at once, each in its placeholder (`st.empty()`).

    Returns, per stream, the plain message of a StudioError that ended it ('' when none)."""
    texts = [""] * len(streams)
    errors = [""] * len(streams)
    pieces = [iter(stream) for stream in streams]
    live = set(range(len(streams)))
    shown = [-1] * len(streams)
    while live:
        moved = False
        for index in sorted(live):
            while index in live and streams[index].ready():
                try:
                    piece = next(pieces[index], None)
                except StudioError as error:
                    errors[index] = str(error)
                    piece = None
                if piece is None:
                    live.discard(index)
                else:
                    texts[index] += piece
                moved = True
        for index, slot in enumerate(slots):
            size = len(texts[index]) + (index in live)
            if size != shown[index]:
                shown[index] = size
                cursor = " ▌" if index in live else ""
                text = answer_markdown(texts[index])
                slot.markdown(text + cursor if text else cursor or " ")
        if not moved:
            time.sleep(0.05)
    return errors
