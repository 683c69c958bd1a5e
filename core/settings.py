"""Configuration: one class, read from `LRS_*` environment variables and an optional `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import InvalidInputError, ReadOnlyError

EMBEDDED_BASE_MODEL = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_EMBEDDING_MODEL = "embedded:all-MiniLM-L6-v2"


class Settings(BaseSettings):
    """Everything a user may change without code. Each description is the field's help text."""

    model_config = SettingsConfigDict(
        env_prefix="LRS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(
        Path("data"),
        description="Folder for everything the studio stores: documents, knowledge bases, "
        "adapters and prepared models.",
    )
    base_model: str = Field(
        EMBEDDED_BASE_MODEL,
        description="The chat model: the embedded default, a Hugging Face Hub id such as "
        "'HuggingFaceTB/SmolLM2-360M-Instruct', or a folder on this machine.",
    )
    embedding_model: str = Field(
        EMBEDDED_EMBEDDING_MODEL,
        description="The model that turns passages into vectors for search: the embedded "
        "default, a Hub id or a folder.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where models run. 'auto' uses a CUDA GPU when there is one."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Number format of the model weights. 'auto': bfloat16 on GPUs and on CPUs "
        "that compute it natively (about twice as fast as float32), float32 elsewhere.",
    )
    decode_weights: Literal["auto", "int8", "full"] = Field(
        "auto",
        description="How answers read the chat model's weights on a CPU. 'auto': 4-bit where "
        "the model file stores 4-bit weights already (the embedded default; nothing changes but "
        "the speed), 8-bit elsewhere (about twice as fast as bfloat16, within a fraction of a "
        "percent of its numbers); 'int8': 8-bit everywhere; 'full': the weights as loaded. "
        "Fine-tuning and LoRA adapters always use the full weights.",
    )
    offline: bool = Field(
        False,
        description="Never contact the Hugging Face Hub; use only models already on this machine.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with a Hub model. Off by default: turn it on only "
        "for a model whose code you have read.",
    )
    system_prompt: str = Field(
        "You are a helpful assistant. Answer briefly and plainly.",
        description="Instructions the model gets before every conversation.",
    )
    temperature: float = Field(
        0.3,
        ge=0.0,
        le=2.0,
        description="How adventurous the wording is. 0 always picks the most likely word; "
        "higher values vary more and invent more.",
    )
    top_p: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Consider only the most likely words that together make up this share of "
        "the probability. Lower is more focused.",
    )
    max_new_tokens: int = Field(
        256, ge=1, le=4096, description="The longest answer, in tokens (about 3/4 of a word each)."
    )
    repetition_penalty: float | None = Field(
        None,
        ge=1.0,
        le=2.0,
        description="How strongly the model avoids words it has already used (in the question "
        "or its answer). Empty: the model's own setting; 1 turns it off. Whatever it is, an "
        "answer that starts repeating itself is stopped.",
    )
    context_window: int | None = Field(
        None,
        ge=64,
        description="Most tokens of conversation the model reads at once. Empty: the model's own "
        "limit. Older turns are dropped first when a conversation grows past it.",
    )
    max_batch: int = Field(
        16,
        ge=1,
        le=256,
        description="Most answers the embedded model writes at once, for all visitors together; "
        "more wait for a place, people at the screen before evaluations.",
    )
    max_waiting: int = Field(
        32,
        ge=1,
        description="Most answers that may wait for a place. Past it a visitor is told that "
        "the studio is busy and how many answers are ahead, instead of waiting without a word.",
    )
    engine_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="Address of an OpenAI-compatible server that writes the answers (vLLM, for "
        "example http://gpu-box:8000/v1), for more visitors than one machine serves. Empty: the "
        "embedded engine, in this process. Search, training and knowledge bases stay here.",
    )
    engine_api_key: SecretStr | None = Field(
        None,
        description="The key that server expects (vLLM's --api-key). Never shown, logged or "
        "exported.",
    )
    engine_model: str | None = Field(
        None,
        description="The base model's name on that server (vLLM's --served-model-name). Empty: "
        "the first model it serves. It must be the same model as LRS_BASE_MODEL, whose "
        "tokenizer builds the prompts.",
    )
    engine_data_dir: str | None = Field(
        None,
        description="Where that server sees this studio's data folder, when it mounts it at "
        "another path (adapters are loaded into it by path). Empty: the same path as here.",
    )
    engine_timeout_s: float = Field(
        60.0,
        gt=0,
        description="How long to wait for that server before telling the user it is not "
        "answering, in seconds.",
    )
    train_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes that train an adapter together (data parallel, under torchrun). "
        "0: one per GPU when there are several, one otherwise.",
    )
    max_upload_mb: int = Field(50, ge=1, description="The largest file you can upload, in MB.")
    chroma_host: str | None = Field(
        None,
        description="Host name of a Chroma server that holds the knowledge bases. Empty: they "
        "are stored on this machine, in the data folder.",
    )
    chroma_port: int = Field(8000, ge=1, le=65535, description="Port of that Chroma server.")
    chroma_ssl: bool = Field(
        False, description="Talk to the Chroma server over TLS (https), checking its certificate."
    )
    chroma_ssl_ca: Path | None = Field(
        None,
        description="A certificate file (PEM) to check the Chroma server's certificate with, "
        "for a server whose certificate no public authority signed. Empty: the system's.",
    )
    chroma_tenant: str = Field(
        "default_tenant",
        min_length=3,
        max_length=63,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The Chroma tenant the studio keeps its knowledge bases in (created when "
        "missing).",
    )
    chroma_database: str | None = Field(
        None,
        min_length=3,
        max_length=63,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The Chroma database the studio keeps its knowledge bases in (created when "
        "missing). Empty: one of this studio's own, named after its data folder's studio id, "
        "so that two studios on one server never share a knowledge base.",
    )
    chroma_token: SecretStr | None = Field(
        None,
        description="The token the Chroma server (or the proxy in front of it) expects. It is "
        "sent with every request and never shown, logged or exported.",
    )
    chroma_token_header: Literal["Authorization", "X-Chroma-Token"] = Field(
        "Authorization",
        description="How the token is sent: 'Authorization' (as 'Bearer <token>') or "
        "'X-Chroma-Token'.",
    )
    chroma_headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='More HTTP headers for every Chroma request, as JSON: {"Name": "value"}. '
        "Their values are treated as secrets.",
    )
    chunk_size: int = Field(
        800,
        ge=100,
        le=8000,
        description="How long each passage is, in characters. Shorter passages find precise "
        "facts; longer ones keep more context together.",
    )
    chunk_overlap: int = Field(
        100,
        ge=0,
        le=2000,
        description="How many characters neighbouring passages share, so that a sentence cut "
        "at a border is still found whole in one of them.",
    )
    top_k: int = Field(
        4, ge=1, le=20, description="How many passages are retrieved and shown to the model."
    )
    parse_timeout_s: int = Field(
        120,
        ge=5,
        description="Longest time reading one PDF, Word file or web page may take before it is "
        "given up as broken.",
    )
    max_document_chars: int = Field(
        5_000_000,
        ge=1_000,
        description="Most characters of text taken from one document (a 100-page manual has "
        "about 300,000): a file that holds more is refused with a message.",
    )
    max_document_passages: int = Field(
        20_000,
        ge=10,
        description="Most passages one document may make (each costs embedding time).",
    )
    parse_memory_mb: int = Field(
        1024,
        ge=256,
        description="Most memory reading one PDF, Word file or web page may use before it is "
        "given up as broken.",
    )

    max_bundle_mb: int = Field(
        1024,
        ge=1,
        description="The largest demo bundle that can be imported, unpacked, in MB. Larger "
        "bundles (and zip bombs) are refused before anything is written.",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="Where prepared models are cached. Empty: the 'models' folder inside the "
        "data folder.",
    )
    demo_bundle: Path | None = Field(
        None,
        description="A demo bundle (.zip made on the Share page) to present read-only: the "
        "studio opens it instead of the data folder, and uploading, training, importing and "
        "deleting are turned off. Empty: the full studio.",
    )
    demo_password: SecretStr | None = Field(
        None,
        description="A password visitors must type to open the studio. Empty: no password "
        "(a 'demo_password' in Streamlit's secrets.toml works too).",
    )
    read_only: bool = Field(
        False,
        description="Refuse every change: no uploads, training, imports or deletions. Demo mode "
        "turns it on.",
    )

    @field_validator("base_model", "embedding_model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("name a model: the embedded default, a Hub id or a folder")
        return value

    @property
    def models_dir(self) -> Path:
        """Where converted and downloaded models are cached."""
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def knowledge_dir(self) -> Path:
        """Where each knowledge base keeps its catalog and its original files."""
        return self.data_dir / "knowledge"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("LRS_CHUNK_OVERLAP must be smaller than LRS_CHUNK_SIZE")
        return self


def check_writable(settings: Settings, doing: str) -> None:
    """Refuse a change in read-only mode, whatever the page shows; `doing` completes
    "... is turned off", for example "Uploading documents"."""
    if settings.read_only:
        raise ReadOnlyError(
            f"{doing} is turned off: this studio presents a read-only demo. Start your own "
            "studio to change it."
        )


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad value becomes one plain sentence naming the variable to fix."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for item in error.errors()[:3]:
            if item["loc"]:
                name = "LRS_" + "_".join(str(part) for part in item["loc"]).upper()
                problems.append(f"{name}: {item['msg']}")
            else:
                problems.append(str(item["msg"]).removeprefix("Value error, "))
        raise InvalidInputError(
            "A setting is not valid, so the studio cannot start. Fix it in the environment or "
            "in .env: " + "; ".join(problems) + "."
        ) from None
