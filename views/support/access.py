"""Who may open the studio: Streamlit's login (when secrets.toml names an identity provider)
and the studio's password, with a growing wait after wrong passwords per client."""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time
from typing import Any

import streamlit as st

from core.settings import Settings


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
