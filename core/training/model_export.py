"""Take a tuned model out of the studio: the adapter merged into the base model's weights, as a
Hugging Face folder (safetensors, loads with `from_pretrained`) and as a GGUF file with an Ollama
`Modelfile`, for llama.cpp and Ollama.

The merge is PEFT's `merge_and_unload`. The GGUF is written with the `gguf` package (llama.cpp's
own Python reader and writer): when the base model came from a GGUF file (the embedded default),
the new file keeps that file's metadata and tokenizer and takes the merged weights; otherwise the
metadata comes from the model's config and the tokenizer from `tokenizer.json`, read by the
`gguf` package's vocabulary classes. Weights are written as Q8_0 (8 bits per weight in blocks of
32, as llama.cpp's `convert_hf_to_gguf.py --outtype q8_0`): the 4-bit grid of the original file
would round away much of what LoRA changed.

GGUF export covers the Llama architecture (SmolLM2, Llama 2 and 3 without rope scaling,
TinyLlama, ...) with a byte-level BPE tokenizer; for other models the merged folder is the way
out (`gguf_support` says so in one sentence).

The results are two zip files in the run folder's `export/`, made once per adapter.
"""

from __future__ import annotations

import functools
import json
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.errors import InvalidInputError, ModelNotAvailableError
from core.memory import release_freed_memory
from core.model import compute
from core.model.loading import describe_model, prepare_model
from core.settings import Settings, check_writable
from core.training import adapters
from core.training.jobs import run_path

EXPORT_DIR = "export"
MERGED_ZIP = "merged-model.zip"
GGUF_ZIP = "gguf-for-llama-cpp-and-ollama.zip"
GGUF_NAME = "model.gguf"
MODELFILE = "Modelfile"
Quantization = Literal["q8_0", "f16", "f32"]
MergedDtype = Literal["bfloat16", "float32"]


@dataclass(frozen=True)
class ExportStep:
    """How far an export has come, for a progress bar."""

    fraction: float
    message: str


@dataclass(frozen=True)
class Exported:
    """The files made for one adapter so far (None: not made yet, or older than the adapter)."""

    merged_zip: Path | None
    gguf_zip: Path | None


def export_dir(settings: Settings, run_id: str) -> Path:
    return run_path(settings, run_id) / EXPORT_DIR


def exported(settings: Settings, run_id: str) -> Exported:
    """The export files of this adapter that are up to date."""
    info = adapters.get(settings, run_id)
    weights_time = (info.folder / adapters.WEIGHTS_FILE).stat().st_mtime
    folder = export_dir(settings, run_id)

    def fresh(name: str) -> Path | None:
        path = folder / name
        return path if path.is_file() and path.stat().st_mtime >= weights_time else None

    return Exported(fresh(MERGED_ZIP), fresh(GGUF_ZIP))


def gguf_support(settings: Settings) -> str:
    """Why the base model cannot be written as GGUF here, in one sentence ("" when it can)."""
    folder = prepare_model(settings.base_model, settings)
    return _gguf_support(str(folder), _source_gguf(settings) is not None)


@functools.lru_cache(maxsize=8)
def _gguf_support(folder: str, from_gguf: bool) -> str:
    """`gguf_support` for a prepared model folder (each adapter card asks on every page run)."""
    convert = " Download the merged model and convert it with llama.cpp's convert_hf_to_gguf.py."
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if config.get("model_type") != "llama":
        kind = config.get("model_type") or "unknown"
        return (
            "A GGUF file is made for Llama-architecture models (like the default SmolLM2); "
            f"this model is '{kind}'." + convert
        )
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        return (
            "This model stretches its context with rope scaling, which the studio's GGUF export "
            "does not write." + convert
        )
    if not from_gguf and _bpe_problem(Path(folder)):
        return (
            "This model's tokenizer is not a byte-level BPE tokenizer, which the studio's GGUF "
            "export needs." + convert
        )
    return ""


def export(
    settings: Settings,
    run_id: str,
    quantization: Quantization = "q8_0",
    merged_dtype: MergedDtype = "bfloat16",
) -> Iterator[ExportStep]:
    """Make the merged model zip and, where supported, the GGUF zip; yield progress."""
    check_writable(settings, "Exporting a model")
    info = adapters.get(settings, run_id)
    if not info.compatible:
        raise ModelNotAvailableError(info.incompatibility)
    target = export_dir(settings, run_id)
    target.mkdir(parents=True, exist_ok=True)
    problem = gguf_support(settings)
    with tempfile.TemporaryDirectory(dir=target, prefix=".work-") as work:
        merged = Path(work) / "merged"
        yield ExportStep(0.02, "Merging the adapter into the model's weights")
        compute.call(_merge, settings, info, merged, merged_dtype)
        release_freed_memory()
        yield ExportStep(0.35, "Packing the merged model")
        (merged / "README.md").write_text(_merged_readme(info, _system_prompt(settings, info)))
        _zip(sorted(merged.iterdir()), target / MERGED_ZIP)
        if problem:
            yield ExportStep(1.0, "Merged model ready")
            return
        gguf_folder = Path(work) / "gguf"
        gguf_folder.mkdir()
        source = _source_gguf(settings)
        yield from write_gguf(
            merged, gguf_folder / GGUF_NAME, source, info.name, quantization, start=0.45
        )
        modelfile = modelfile_text(settings, info, merged)
        (gguf_folder / MODELFILE).write_text(modelfile)
        (gguf_folder / "README.md").write_text(_gguf_readme(info))
        yield ExportStep(0.95, "Packing the GGUF file and its Modelfile")
        _zip(sorted(gguf_folder.iterdir()), target / GGUF_ZIP)
    yield ExportStep(1.0, "Ready to download")


def _system_prompt(settings: Settings, info: adapters.AdapterInfo) -> str:
    """The instructions the tuned mode answers under in the studio."""
    return info.system_prompt or settings.system_prompt


def _merge(settings: Settings, info: adapters.AdapterInfo, target: Path, dtype: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = prepare_model(settings.base_model, settings)
    options: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": settings.trust_remote_code,
    }
    base = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, use_safetensors=True, **options
    )
    tuned = PeftModel.from_pretrained(base, info.folder, use_safetensors=True)
    merged = tuned.merge_and_unload()
    merged.to(getattr(torch, dtype))
    merged.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(folder, **options).save_pretrained(target)


def _source_gguf(settings: Settings) -> Path | None:
    """The GGUF file the base model was converted from, when it was."""
    path = describe_model(settings.base_model, settings).path
    return path if path is not None and path.suffix == ".gguf" else None


def _bpe_problem(folder: Path) -> str:
    from gguf.vocab import BpeVocab

    try:
        BpeVocab(folder)
    except (OSError, ValueError, KeyError) as error:
        return str(error) or error.__class__.__name__
    return ""


def write_gguf(
    merged: Path,
    target: Path,
    source: Path | None,
    name: str,
    quantization: Quantization = "q8_0",
    start: float = 0.0,
) -> Iterator[ExportStep]:
    """Write the Llama model in the folder `merged` as one GGUF file at `target`."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    config = json.loads((merged / "config.json").read_text())
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    writer = gguf.GGUFWriter(target, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    reader = gguf.GGUFReader(source) if source is not None else None
    if reader is not None:
        _copy_metadata(reader, writer)
        order = [t.name for t in reader.tensors]
        shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    else:
        _metadata_from_config(writer, config, merged)
        order, shapes = [], {}
    writer.add_name(name)
    file_type = {
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "f32": gguf.LlamaFileType.ALL_F32,
    }[quantization]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    weights: dict[str, Any] = {}
    files = sorted(merged.glob("*.safetensors"))
    for number, path in enumerate(files):
        with safe_open(str(path), framework="pt") as opened:
            keys = list(opened.keys())
            for key in keys:
                if key == "lm_head.weight" and config.get("tie_word_embeddings", False):
                    continue  # the output layer is the token embedding, stored once
                gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise InvalidInputError(f"The GGUF export does not know the weight '{key}'.")
                array = opened.get_tensor(key).float().numpy()
                if key.endswith("q_proj.weight"):
                    array = _permute(array, heads, heads)
                elif key.endswith("k_proj.weight"):
                    array = _permute(array, heads, kv_heads)
                if shapes and shapes.get(gguf_name) != array.shape:
                    raise InvalidInputError(
                        f"The merged weight '{key}' does not fit the base model's GGUF file."
                    )
                weights[gguf_name] = array
        yield ExportStep(start + (0.9 - start) * 0.5 * (number + 1) / len(files), "Reading weights")
    missing = [n for n in order if n not in weights]
    if missing:
        raise InvalidInputError(
            f"The merged model lacks the weight '{missing[0]}' of the GGUF file."
        )
    ordered = order or list(weights)
    q8_block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]  # weights per block
    for index, gguf_name in enumerate(ordered):
        array = weights.pop(gguf_name)
        if array.ndim == 1 or quantization == "f32":
            writer.add_tensor(gguf_name, array.astype(np.float32))
        elif quantization == "f16" or array.shape[-1] % q8_block:
            writer.add_tensor(gguf_name, array.astype(np.float16))
        else:
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        if index % 16 == 0:
            fraction = start + (0.9 - start) * (0.5 + 0.5 * (index + 1) / len(ordered))
            yield ExportStep(fraction, f"Writing the GGUF file ({index + 1} of {len(ordered)})")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _permute(weights: Any, heads: int, kv_heads: int) -> Any:
    """Reorder a query or key projection from Hugging Face's rotary layout to llama.cpp's (the
    inverse of what transformers does when it reads a Llama GGUF; as in convert_hf_to_gguf.py)."""
    groups = kv_heads if kv_heads != heads else heads
    return (
        weights.reshape(groups, 2, weights.shape[0] // groups // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _copy_metadata(reader: Any, writer: Any) -> None:
    """Every key of the source file except those the writer sets itself or this export changes."""
    import gguf

    skip = {
        gguf.Keys.General.ARCHITECTURE,
        gguf.Keys.General.NAME,
        gguf.Keys.General.FILE_TYPE,
        gguf.Keys.General.QUANTIZATION_VERSION,
    }
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in skip:
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)


def _metadata_from_config(writer: Any, config: dict[str, Any], folder: Path) -> None:
    import gguf
    from gguf.vocab import BpeVocab, SpecialVocab

    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(int(config["vocab_size"]))

    vocab = BpeVocab(folder)
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text)
        types.append(kind)
    # Special tokens that the BPE model also lists as ordinary ones (ChatML's markers) must be
    # control tokens, or llama.cpp reads "<|im_end|>" in a prompt as text.
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    for added in tokenizer.get("added_tokens") or []:
        if added.get("special") and 0 <= int(added["id"]) < len(types):
            types[int(added["id"])] = gguf.TokenType.CONTROL
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def modelfile_text(settings: Settings, info: adapters.AdapterInfo, merged: Path) -> str:
    """An Ollama Modelfile for the GGUF beside it: the chat template, the instructions the tuned
    model answers under in the studio, and the studio's sampling settings."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged, local_files_only=True)
    template = tokenizer.chat_template or ""
    system = _system_prompt(settings, info)
    lines = [f"# {_one_line(info.name)}: made by LoRA-RAG Studio", f"FROM ./{GGUF_NAME}", ""]
    if "<|im_start|>" in template:  # ChatML, as SmolLM2, Qwen and many small models use
        lines += [
            'TEMPLATE """{{- if .System }}<|im_start|>system',
            "{{ .System }}<|im_end|>",
            "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
            "{{ .Content }}<|im_end|>",
            "{{ end }}<|im_start|>assistant",
            '"""',
            'PARAMETER stop "<|im_end|>"',
            'PARAMETER stop "<|im_start|>"',
        ]
    else:
        lines.append("# Ollama takes the chat template stored in the GGUF file.")
    lines += [
        f'SYSTEM """{_quoted(system)}"""',
        f"PARAMETER temperature {settings.temperature:g}",
        f"PARAMETER top_p {settings.top_p:g}",
    ]
    penalty = settings.repetition_penalty
    if penalty is None:
        penalty = _generation_setting(merged, "repetition_penalty")
    if penalty is not None:
        lines.append(f"PARAMETER repeat_penalty {float(penalty):g}")
    return "\n".join(lines) + "\n"


def _generation_setting(folder: Path, key: str) -> Any:
    try:
        return json.loads((folder / "generation_config.json").read_text()).get(key)
    except (OSError, ValueError):
        return None


def _quoted(text: str) -> str:
    """Text for a triple-quoted Modelfile value: it must not close the quotes itself."""
    return text.replace('"""', "'''")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _merged_readme(info: adapters.AdapterInfo, system: str) -> str:
    return (
        f"# {_one_line(info.name)}\n\n"
        "The base model with the LoRA adapter merged into its weights, made by LoRA-RAG "
        "Studio.\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("this-folder")\n'
        'tokenizer = AutoTokenizer.from_pretrained("this-folder")\n'
        "```\n\n"
        "It answers best under the instructions it was trained with:\n\n"
        f"    {_one_line(system)}\n"
    )


def _gguf_readme(info: adapters.AdapterInfo) -> str:
    return (
        f"# {_one_line(info.name)}\n\n"
        f"`{GGUF_NAME}` is the tuned model for llama.cpp and Ollama (weights in 8 bits, Q8_0).\n\n"
        f"- Ollama: in this folder, `ollama create my-model -f {MODELFILE}`, then "
        "`ollama run my-model`.\n"
        f"- llama.cpp: `llama-cli -m {GGUF_NAME} -cnv` (the chat template is in the file).\n"
    )


def _zip(paths: list[Path], target: Path) -> None:
    """Zip `paths` (files) into `target`, replacing it only when complete. Weights barely
    compress, so they are stored as they are."""
    staging = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(staging, "w") as archive:
        for path in paths:
            compress = (
                zipfile.ZIP_STORED if path.stat().st_size > 10_000_000 else zipfile.ZIP_DEFLATED
            )
            archive.write(path, arcname=path.name, compress_type=compress)
    staging.replace(target)
