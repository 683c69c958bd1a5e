"""LoRA-RAG Studio: page setup, navigation and the shared sidebar.

The pages live in views/, not pages/: a folder named pages/ beside this file makes Streamlit
start in its legacy multipage mode, and a first visit straight to a page's URL (say /chat) then
ran that page without this file, so without its setup.
"""

from pathlib import Path

import streamlit as st

from views import common

st.set_page_config(page_title="LoRA-RAG Studio", page_icon=":material/compare:", layout="wide")
st.logo(str(Path(__file__).parent / "assets" / "logo.svg"), size="large")

settings = common.get_settings()
pages = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/chat.py", title="Chat", icon=":material/chat:"),
    st.Page("views/knowledge.py", title="Knowledge base", icon=":material/library_books:"),
    st.Page("views/finetune.py", title="Fine-tune", icon=":material/model_training:"),
    st.Page("views/arena.py", title="Arena", icon=":material/view_column:"),
    st.Page("views/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("views/share.py", title="Share", icon=":material/share:"),
]
if settings.read_only:  # a demo: training and importing are not offered at all
    pages = [p for p in pages if p.title not in ("Fine-tune", "Share")]
locked = common.locked(settings)
navigation = st.navigation(pages, position="hidden" if locked else "sidebar")
common.access_gate(settings)
common.sidebar()
navigation.run()
