"""LoRA-RAG Studio: page setup, navigation, the access gate and the shared sidebar.

The pages live in views/, not pages/: a folder named pages/ beside this file makes Streamlit
start in its legacy multipage mode, and a first visit straight to a page's URL (say /chat) then
runs that page without this file: without its setup, its read-only filter and its password gate
(README, "Why views/ and not pages/"; tests/views/test_layout.py fails if one appears).
"""

from pathlib import Path

import streamlit as st

from views.support import access, resources, state

PAGES = [
    ("views/home.py", "Home", ":material/home:"),
    ("views/chat.py", "Chat", ":material/chat:"),
    ("views/knowledge.py", "Knowledge base", ":material/library_books:"),
    ("views/finetune.py", "Fine-tune", ":material/model_training:"),
    ("views/arena.py", "Arena", ":material/view_column:"),
    ("views/evaluate.py", "Evaluate", ":material/fact_check:"),
    ("views/share.py", "Share", ":material/share:"),
]
WRITING_PAGES = ("Fine-tune", "Share")  # not offered at all in a read-only demo


def main() -> None:
    st.set_page_config(page_title="LoRA-RAG Studio", page_icon=":material/compare:", layout="wide")
    st.logo(str(Path(__file__).parent / "assets" / "logo.svg"), size="large")
    settings = resources.get_settings()
    pages = [
        st.Page(path, title=title, icon=icon, default=path == PAGES[0][0])
        for path, title, icon in PAGES
        if not (settings.read_only and title in WRITING_PAGES)
    ]
    locked = access.locked(settings)
    navigation = st.navigation(pages, position="hidden" if locked else "sidebar")
    access.access_gate(settings)
    state.init_state(settings)
    resources.sidebar(settings)
    navigation.run()


main()
