"""Taking a tuned model out of the studio: the merged model and the GGUF file with its Modelfile,
each loaded back and compared with the tuned model the studio runs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from core.errors import ModelNotAvailableError
from core.training import adapters, model_export
from tests.support.training import trained

PROMPT = "What is the capital of France? (fox 3)"


def _export(settings, run_id: str, **options) -> list[model_export.ExportStep]:
    return list(model_export.export(settings, run_id, **options))


def _unzip(path: Path, folder: Path) -> Path:
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
    return folder


def _tuned(settings, run_id: str):
    """The base model with the adapter beside it, as PEFT loads them (float32)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(settings.base_model, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapters.get(settings, run_id).folder).eval()


def _ids(folder: Path, **options) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, **options)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, return_tensors="pt").input_ids


def _greedy(model, ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, repetition_penalty=1.0)
    return out[0, ids.shape[1] :].tolist()


def test_the_merged_model_loads_with_from_pretrained_and_answers_as_the_tuned_model(
    settings, tmp_path
) -> None:
    from transformers import AutoModelForCausalLM

    run_id = trained(settings, "Capitals", system_prompt="Be quick.")
    steps = _export(settings, run_id, merged_dtype="float32", quantization="f32")
    fractions = [s.fraction for s in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    made = model_export.exported(settings, run_id)
    assert made.merged_zip is not None and made.gguf_zip is not None

    folder = _unzip(made.merged_zip, tmp_path / "merged")
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    assert "Be quick." in (folder / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tuned = _tuned(settings, run_id)
    ids = _ids(folder)
    assert torch.equal(ids, _ids(Path(settings.base_model)))
    with torch.no_grad():
        difference = (merged(ids).logits - tuned(input_ids=ids).logits).abs().max()
    assert difference < 1e-3
    assert _greedy(merged, ids) == _greedy(tuned, ids)
    base = AutoModelForCausalLM.from_pretrained(settings.base_model).eval()
    with torch.no_grad():
        assert (merged(ids).logits - base(ids).logits).abs().max() > 1e-2  # the adapter is in it


def test_the_gguf_file_reads_back_with_transformers_as_the_tuned_model(settings, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    run_id = trained(settings, "Capitals")
    _export(settings, run_id, merged_dtype="float32", quantization="f32")
    folder = _unzip(model_export.exported(settings, run_id).gguf_zip, tmp_path / "gguf")
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "README.md", "model.gguf"]
    options = {"gguf_file": "model.gguf", "local_files_only": True}
    ids = _ids(folder, **options)
    assert torch.equal(ids, _ids(Path(settings.base_model)))  # the tokenizer survives the trip
    from_gguf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **options).eval()
    tuned = _tuned(settings, run_id)
    with torch.no_grad():
        difference = (from_gguf(ids).logits - tuned(input_ids=ids).logits).abs().max()
    assert difference < 1e-3  # the query and key rows are reordered and reordered back exactly
    assert _greedy(from_gguf, ids) == _greedy(tuned, ids)


def test_eight_bit_gguf_keeps_the_tuned_models_choices(settings, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    run_id = trained(settings, "Capitals")
    _export(settings, run_id)  # the defaults: bfloat16 merged model, Q8_0 GGUF
    made = model_export.exported(settings, run_id)
    merged_folder = _unzip(made.merged_zip, tmp_path / "merged")
    assert '"dtype": "bfloat16"' in (merged_folder / "config.json").read_text()
    gguf_folder = _unzip(made.gguf_zip, tmp_path / "gguf")
    import gguf

    types = {t.name: t.tensor_type for t in gguf.GGUFReader(gguf_folder / "model.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    from_gguf = AutoModelForCausalLM.from_pretrained(
        gguf_folder, gguf_file="model.gguf", dtype=torch.float32, local_files_only=True
    ).eval()
    tuned = _tuned(settings, run_id)
    ids = _ids(gguf_folder, gguf_file="model.gguf", local_files_only=True)
    # Teacher-forced, at each position of the tuned model's own answer: the file's scores lie
    # far nearer the tuned model's than the base model's do, and so do its choices. (This tiny
    # random model's scores are close together: 8-bit rounding flips a near tie now and then,
    # so no single choice is required to hold.)
    full = torch.cat([ids, torch.tensor([_greedy(tuned, ids)])], dim=1)
    answer = slice(ids.shape[1] - 1, None)
    with torch.no_grad():
        mine = from_gguf(full).logits[0, answer]
        theirs = tuned(input_ids=full).logits[0, answer]
        with tuned.disable_adapter():
            base = tuned(input_ids=full).logits[0, answer]
    assert (mine - theirs).norm() < 0.5 * (base - theirs).norm()
    agree = (mine.argmax(-1) == theirs.argmax(-1)).float().mean()
    assert agree >= 0.75
    assert agree > (base.argmax(-1) == theirs.argmax(-1)).float().mean()


def test_a_gguf_source_lends_its_metadata_and_tokenizer(settings, tmp_path) -> None:
    """With the base model's own GGUF file as the source (as for the embedded default), the
    export keeps its keys and tokenizer and takes the merged weights."""
    import gguf

    run_id = trained(settings, "Capitals")
    _export(settings, run_id, merged_dtype="float32", quantization="f32")
    made = model_export.exported(settings, run_id)
    source = _unzip(made.gguf_zip, tmp_path / "source") / "model.gguf"
    merged = _unzip(made.merged_zip, tmp_path / "merged")
    target = tmp_path / "again.gguf"
    list(model_export.write_gguf(merged, target, source, "Again", "q8_0"))
    before, after = gguf.GGUFReader(source), gguf.GGUFReader(target)
    assert after.fields["general.name"].contents() == "Again"
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"):
        assert after.fields[key].contents() == before.fields[key].contents()
    assert [t.name for t in after.tensors] == [t.name for t in before.tensors]
    assert after.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_the_modelfile_carries_the_template_instructions_and_settings(settings) -> None:
    run_id = trained(settings, "Pirate", system_prompt='Say """fox""".')
    _export(settings, run_id)
    with zipfile.ZipFile(model_export.exported(settings, run_id).gguf_zip) as archive:
        text = archive.read("Modelfile").decode()
    assert "FROM ./model.gguf" in text
    assert "{{ .System }}<|im_end|>" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "SYSTEM \"\"\"Say '''fox'''.\"\"\"" in text  # never closes early
    assert f"PARAMETER temperature {settings.temperature:g}" in text


def test_a_model_the_gguf_export_does_not_cover_is_said_plainly(settings, tmp_path) -> None:
    import json
    import shutil

    folder = tmp_path / "other-model"
    shutil.copytree(settings.base_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    other = settings.model_copy(update={"base_model": str(folder)})
    assert "Llama-architecture" in model_export.gguf_support(other)
    assert model_export.gguf_support(settings) == ""


def test_an_export_is_refused_for_an_adapter_of_another_model(settings) -> None:
    run_id = trained(settings, "Elsewhere")
    other = settings.model_copy(update={"base_model": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    with pytest.raises(ModelNotAvailableError, match="Trained on"):
        _export(other, run_id)
    assert model_export.exported(settings, run_id) == model_export.Exported(None, None)
