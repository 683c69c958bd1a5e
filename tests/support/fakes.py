"""Test doubles: a tiny random model built offline, and a chat model with queued replies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from core.model.chat import ChatRequest, ChatStream, Message, OneOfMany, SamplingParams
from core.model.local import check_adapter_files

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The capital of France is Paris.",
    "What is the capital of France?",
    "You are a helpful assistant. Answer briefly and plainly.",
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval augmented generation reads your documents; LoRA fine-tuning learns behaviour.",
] * 20


def build_tiny_model(folder: Path) -> Path:
    """Save a tiny randomly initialised Llama and a small byte-level BPE tokenizer in `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.5,  # large random weights: varied tokens instead of one repeated
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


class FakeChatModel(OneOfMany):
    """Answers with queued replies, streamed word by word, and records what it was asked.

    A reply may be a function of the request, to answer each arena mode its own way."""

    name = "fake-model"

    def __init__(
        self,
        replies: Sequence[str | Callable[[ChatRequest], str]] = ("Fake answer.",),
        notices: Sequence[str] = (),
    ):
        self.replies = list(replies)
        self.notices = list(notices)
        self.calls: list[tuple[list[Message], SamplingParams, str]] = []
        self.requests: list[ChatRequest] = []
        self.adapters: dict[str, Path] = {}
        self.batches: list[int] = []  # the size of every stream_many call
        self.background: list[bool] = []  # whether each call was a background one

    def load_adapter(self, name: str, folder: Path, label: str = "") -> None:
        check_adapter_files(folder, label or name)  # damaged files fail as with the real model
        self.adapters[name] = folder

    def stream_many(
        self,
        requests: Sequence[ChatRequest],
        params: SamplingParams,
        seed: int | None = None,
        *,
        background: bool = False,
    ) -> list[ChatStream]:
        self.batches.append(len(requests))
        self.background.append(background)
        streams = []
        for request in requests:
            self.calls.append((list(request.messages), params, request.system_prompt))
            self.requests.append(request)
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            text = reply(request) if callable(reply) else reply
            words = text.split(" ")
            pieces = [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in request.messages)
            streams.append(
                ChatStream(
                    iter(pieces),
                    prompt_tokens=7,
                    notices=self.notices,
                    prompt=prompt,
                    ends=request.ends,
                )
            )
        return streams
