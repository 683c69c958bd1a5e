"""The foundation in a real browser: Home explains, Chat streams an answer from the real model."""

import time

import pytest

from tests.e2e.conftest import screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_chat_streams_an_answer_from_the_default_model(page, studio_url: str) -> None:
    # First thing after the server starts, straight to the page's URL: the shared setup in app.py
    # must still run (a `pages/` folder once made Streamlit skip it).
    page.goto(f"{studio_url}/chat")
    # The first start converts the model (about 20 s) with a progress bar; later ones load fast.
    box = page.get_by_test_id("stChatInputTextArea")
    preparing = page.get_by_text("Preparing the model for its first use")
    box.or_(preparing).first.wait_for(timeout=60_000)
    if preparing.count():
        page.get_by_test_id("stProgress").first.wait_for(timeout=60_000)
        screenshot(page, "02-chat-preparing")
        assert page.get_by_test_id("stProgress").count() == 1
    box.wait_for(timeout=180_000)
    screenshot(page, "02-chat-ready")

    box.fill("Write three sentences about Paris, the capital of France.")
    box.press("Enter")
    answer = page.get_by_test_id("stChatMessage").nth(1).get_by_test_id("stMarkdown").first
    answer.wait_for(timeout=60_000)
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen.append(answer.inner_text())
        if page.get_by_text("tokens/s").count():
            break
        time.sleep(0.1)
    screenshot(page, "03-chat-answered")

    final = answer.inner_text().strip()
    assert "Paris" in final
    # Streamed: the answer was seen part-written, growing, before it was complete.
    partial = {text.strip() for text in seen if text.strip() and text.strip() != final}
    assert len(partial) >= 2, seen
    assert all(final.startswith(text[:20]) for text in partial)
    assert page.get_by_test_id("stException").count() == 0
    assert page.get_by_text("first token after").count() == 1


def test_home_page_in_chromium(page, studio_url: str) -> None:
    page.goto(studio_url)
    page.get_by_text("LoRA or RAG? When each one helps").wait_for(timeout=60_000)
    page.get_by_text("SmolLM2-135M-Instruct").first.wait_for()
    screenshot(page, "01-home")
    assert page.get_by_test_id("stException").count() == 0


def test_two_browser_sessions_asking_at_once_get_their_own_answers(browser, studio_url) -> None:
    questions = {
        "What is the capital of France?": "Paris",
        "What is the capital of Japan?": "Tokyo",
    }
    contexts = [browser.new_context(viewport={"width": 1000, "height": 800}) for _ in questions]
    try:
        pages = [context.new_page() for context in contexts]
        for page in pages:
            page.goto(f"{studio_url}/chat")
            page.get_by_test_id("stChatInputTextArea").wait_for(timeout=180_000)
        for page, question in zip(pages, questions, strict=True):  # both sent before either ends
            page.get_by_test_id("stChatInputTextArea").fill(question)
            page.get_by_test_id("stChatInputTextArea").press("Enter")
        for index, (page, expected) in enumerate(zip(pages, questions.values(), strict=True)):
            page.get_by_text("tokens/s").wait_for(timeout=90_000)
            answer = page.get_by_test_id("stChatMessage").nth(1).inner_text()
            screenshot(page, f"04-session-{index + 1}")
            assert expected in answer
            assert page.get_by_test_id("stException").count() == 0
    finally:
        for context in contexts:
            context.close()
