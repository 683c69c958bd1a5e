"""Every key this session keeps in `st.session_state`, with its first value: the one place a
key is made (`init_state`, called by app.py before any page), and the readers of page settings."""

from __future__ import annotations

from dataclasses import asdict

import streamlit as st

from core.answering.modes import MODES
from core.model.chat import SamplingParams
from core.settings import Settings
from core.training.config import PRESETS


def init_state(settings: Settings) -> None:
    """Per-user UI state, all initialised here."""
    defaults = {
        "chat_messages": [],
        **{
            f"{page}_{name}": getattr(settings, name)
            for page in ("chat", "arena")
            for name in (
                "system_prompt",
                "temperature",
                "top_p",
                "max_new_tokens",
                "repetition_penalty",
            )
        },
        "arena_conversation": None,  # core.answering.conversations.Conversation
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
        "share_imported": None,  # core.sharing.export.ImportResult of the last import
        "kb_chunk_size": settings.chunk_size,
        "kb_chunk_overlap": settings.chunk_overlap,
        "kb_top_k": settings.top_k,
        "kb_upload_round": 0,  # bumped after an upload, which gives the uploader a fresh key
        "kb_seen_jobs": [],  # document jobs this session started or watched: their outcome shows
        "kb_hidden_jobs": [],  # document jobs whose outcome this session put away
        "kb_watching": False,  # a document job was running at the last look
        "ft_data": None,  # {"name", "data", "source"} of the dataset being prepared
        "ft_upload_round": 0,
        "ft_teach": "examples",  # what the next adapter learns: "examples" or "documents"
        "ft_preset": "balanced",  # the one-click choice: it makes a persona take (issue 20)
        "ft_system_prompt": settings.system_prompt,
        "ft_run_id": None,  # the run started in this session
        "ft_watching": None,  # the run whose end this session waits for, to show its adapter
        "kb_select_next": None,  # a knowledge base just created: chosen on the next run
        "access_granted": False,  # the studio's password was given in this session
        **{f"ft_{name}": value for name, value in asdict(PRESETS["balanced"].config).items()},
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def sampling_params(page: str = "chat") -> SamplingParams:
    return SamplingParams(
        temperature=float(st.session_state[f"{page}_temperature"]),
        top_p=float(st.session_state[f"{page}_top_p"]),
        max_new_tokens=int(st.session_state[f"{page}_max_new_tokens"]),
        repetition_penalty=st.session_state[f"{page}_repetition_penalty"],
    )
