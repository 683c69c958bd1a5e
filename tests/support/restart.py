"""What a new server process starts with, inside the test process."""

import gc


def forget_chroma_clients() -> None:
    """No Chroma client open on any folder, as in a studio that has just started."""
    from chromadb.api.client import SharedSystemClient

    from core.knowledge import chroma

    chroma._chroma_client.cache_clear()
    SharedSystemClient.clear_system_cache()
    gc.collect()


def restart_studio() -> None:
    """Everything a studio keeps per process forgotten: clients, caches, the start-up checks."""
    import streamlit as st

    from views.support import resources

    forget_chroma_clients()
    st.cache_resource.clear()
    resources._repaired.clear()
