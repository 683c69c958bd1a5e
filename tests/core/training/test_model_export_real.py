"""The real default model with the Balanced persona adapter, exported: the GGUF keeps the source
file's metadata and tokenizer, and the tuned model's answers survive the trip, read back by
transformers and, where it is installed, by llama.cpp."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from core.settings import Settings
from core.training import adapters, model_export
from tests.support.training import copy_run

pytestmark = pytest.mark.slow

QUESTIONS = ["What name were you given?", "Could you introduce yourself briefly?", "Who are you?"]
PEERS_PYTHON = Path(__file__).resolve().parents[3] / ".venv-peers" / "bin" / "python"
LLAMA_CPP_ANSWER = """
import json, sys
from llama_cpp import Llama
job = json.load(sys.stdin)
llm = Llama(model_path=job["gguf"], n_ctx=512, n_batch=1, n_ubatch=1, verbose=False)
answers = []
for ids in job["prompts"]:
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        if token == llm.token_eos() or len(out) >= 24:
            break
        out.append(token)
    answers.append(llm.detokenize(out).decode("utf-8", "replace"))
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def exported(real_persona_run: Path, fresh_real_data_dir, tmp_path_factory) -> dict:
    data_dir = fresh_real_data_dir()
    settings = Settings(_env_file=None, data_dir=data_dir)
    run_id = copy_run(real_persona_run, data_dir)
    steps = list(model_export.export(settings, run_id))
    assert steps[-1].fraction == 1.0
    made = model_export.exported(settings, run_id)
    folder = tmp_path_factory.mktemp("exported")
    for name in (made.merged_zip, made.gguf_zip):
        with zipfile.ZipFile(name) as archive:
            archive.extractall(folder / name.stem)
    return {
        "settings": settings,
        "adapter": adapters.get(settings, run_id),
        "merged": folder / made.merged_zip.stem,
        "gguf": folder / made.gguf_zip.stem,
    }


def _prompts(tokenizer, system: str) -> list[list[int]]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": q}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for q in QUESTIONS
    ]


def _greedy(model, tokenizer, prompts: list[list[int]]) -> list[str]:
    answers = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=24, do_sample=False, repetition_penalty=1.0
            )
        answers.append(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True))
    return answers


def test_the_exported_gguf_keeps_the_source_tokenizer_and_the_tuned_name(exported) -> None:
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader = gguf.GGUFReader(exported["gguf"] / "model.gguf")
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"  # the source file's
    assert reader.fields["general.name"].contents() == exported["adapter"].name
    options = {"gguf_file": "model.gguf", "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(exported["gguf"], **options)
    model = AutoModelForCausalLM.from_pretrained(exported["gguf"], dtype=torch.float32, **options)
    system = exported["adapter"].system_prompt
    answers = _greedy(model.eval(), tokenizer, _prompts(tokenizer, system))
    assert all("Lumen" in a for a in answers), answers

    merged = AutoModelForCausalLM.from_pretrained(exported["merged"], local_files_only=True)
    merged_tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    merged_answers = _greedy(merged.eval(), merged_tokenizer, _prompts(merged_tokenizer, system))
    assert all("Lumen" in a for a in merged_answers), merged_answers
    modelfile = (exported["gguf"] / "Modelfile").read_text()
    assert json.dumps(system)[1:-1] in modelfile or system in modelfile


@pytest.mark.skipif(
    not PEERS_PYTHON.exists(), reason="llama.cpp is not installed (make bench-peers)"
)
def test_llama_cpp_runs_the_exported_gguf_and_says_the_new_name(exported) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    job = {
        "gguf": str(exported["gguf"] / "model.gguf"),
        "prompts": _prompts(tokenizer, exported["adapter"].system_prompt),
    }
    done = subprocess.run(
        [str(PEERS_PYTHON), "-c", LLAMA_CPP_ANSWER],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert sum("Lumen" in a for a in answers) >= 2, answers
