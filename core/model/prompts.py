"""The prompt a chat model reads: the conversation through the model's chat template, cut to fit
its context window with a notice for each cut. The embedded engine and a remote one send the
same token ids, so that the Prompt view shows exactly what the model read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.errors import InvalidInputError
from core.model.chat import Message, clean_messages


class PromptBuilder:
    """Token ids for a conversation, with `tokenizer`'s chat template, within `context_window`."""

    def __init__(self, tokenizer: Any, context_window: int) -> None:
        self.tokenizer = tokenizer
        self.context_window = context_window

    def favoured(self, text: str) -> tuple[int, ...]:
        """The tokens of `text` as the model would write them (a request's `favour`): each word
        as it stands in the text and, for the first, after a space too."""
        forms = [text, f" {text}"]
        found = {t for form in forms for t in self.tokenizer.encode(form, add_special_tokens=False)}
        return tuple(sorted(found))

    def encode(self, messages: Sequence[Message]) -> list[int]:
        tok = self.tokenizer
        if tok.chat_template:
            try:
                return list(
                    tok.apply_chat_template(
                        list(messages), add_generation_prompt=True, tokenize=True, return_dict=False
                    )
                )
            except Exception as error:
                if messages and messages[0]["role"] == "system" and "system" in str(error).lower():
                    # Some templates have no system role: fold it into the first question.
                    merged = [dict(m) for m in messages[1:]]
                    merged[0]["content"] = f"{messages[0]['content']}\n\n{merged[0]['content']}"
                    return self.encode(merged)
                raise
        # A base model without a chat template still gets a readable transcript.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return list(tok("\n".join([*lines, "Assistant:"]), add_special_tokens=True)["input_ids"])

    def build(
        self, messages: Sequence[Message], system_prompt: str, max_new_tokens: int
    ) -> tuple[list[int], list[str], int]:
        """Token ids that fit the context window, the notices about what was cut, and the
        number of new tokens that still fit."""
        turns = clean_messages(messages)
        system = (
            [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
        )
        max_new = max(1, min(max_new_tokens, self.context_window // 2))
        budget = self.context_window - max_new
        notices: list[str] = []
        if max_new < max_new_tokens:
            notices.append(
                f"Answers are limited to {max_new} tokens so that the question fits the model's "
                f"context of {self.context_window} tokens."
            )
        ids = self.encode(system + turns)
        dropped = 0
        while len(ids) > budget and len(turns) > 1:
            turns = turns[2:] if len(turns) > 2 else turns[1:]
            dropped += 1
            ids = self.encode(system + turns)
        if dropped:
            notices.append(
                "Older messages were left out so that the conversation fits the model's context "
                f"of {self.context_window} tokens. Start a new chat to clear them."
            )
        if len(ids) > budget:
            content_ids = self.tokenizer(turns[-1]["content"], add_special_tokens=False)[
                "input_ids"
            ]
            overhead = len(ids) - len(content_ids)
            keep = budget - overhead
            if keep < 1:
                raise InvalidInputError(
                    "The system prompt alone fills the model's context: shorten it."
                )
            turns[-1] = {"role": "user", "content": self.tokenizer.decode(content_ids[:keep])}
            ids = self.encode(system + turns)[-budget:]
            notices.append(
                f"Your message was too long for the model: only its first {keep} of "
                f"{len(content_ids)} tokens were used."
            )
        return ids, notices, max_new
