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

navigation = st.navigation(
    [
        st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("views/chat.py", title="Chat", icon=":material/chat:"),
        st.Page("views/knowledge.py", title="Knowledge base", icon=":material/library_books:"),
        st.Page("views/finetune.py", title="Fine-tune", icon=":material/model_training:"),
        st.Page("views/arena.py", title="Arena", icon=":material/view_column:"),
        st.Page("views/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    ]
)
common.sidebar()
navigation.run()
