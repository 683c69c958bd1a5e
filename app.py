"""LoRA-RAG Studio: page setup, navigation and the shared sidebar."""

from pathlib import Path

import streamlit as st

from pages import common

st.set_page_config(page_title="LoRA-RAG Studio", page_icon=":material/compare:", layout="wide")
st.logo(str(Path(__file__).parent / "assets" / "logo.svg"), size="large")

navigation = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/chat.py", title="Chat", icon=":material/chat:"),
    ]
)
common.sidebar()
navigation.run()
