"""Our LoRA training path against a plain Trainer + PEFT recipe: same model, data and settings.

"Plain" is the recipe a tutorial gives: the model loaded with transformers' defaults (float32
here), `get_peft_model`, `Trainer` with random batches padded per batch
(`DataCollatorForSeq2Seq(padding=True)`), and the model's own loss on the answer tokens. "Ours"
is the studio's worker (core.training.worker) on a real run folder, with everything a user gets:
held-out checks and checkpoints during the run included. Both train the same examples (the studio's
system prompt, answer-only labels, the same cut at the maximum length) with the same LoRA settings,
batch size, epochs, learning rate and seed, each in its own process so that its peak memory is its
own.

Also measured in the same run: the machine's matrix-multiply rate, in float32 and in the number
format ours computes in, and with it the FLOP limit of LoRA training (4 x parameters FLOP per
token: forward, and backward through the activations; the frozen weights need no gradient).

Prints one JSON line: useful (non-padding) tokens/s, peak memory and final held-out loss (both
models measured the same way, in float32) of each; "ratio" (ours over plain, useful tokens/s) and
"target" (3.0); the time each takes to reach the plain recipe's held-out loss (ours trains more
epochs if its bfloat16 steps have not got there); and our share of the FLOP limit.

    .venv/bin/python bench/train.py [--dataset assets/examples/persona.jsonl] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import load_settings  # noqa: E402 - after the path is set
from core.training.config import TrainConfig  # noqa: E402

DEFAULT_DATASET = ROOT / "assets" / "examples" / "persona.jsonl"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(dtype_name: str, size: int = 1024, rounds: int = 20) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(rounds):
        a @ b
    return 2 * size**3 * rounds / (time.perf_counter() - start) / 1e9


def held_out_loss(model, rows, tokenizer, batch_size: int, bf16: bool) -> float:
    """Mean loss per answer token over the held-out rows, the same way for both."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            answers = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * answers
            count += answers
    return total / max(count, 1)


def prepared(dataset_path: Path, config: TrainConfig):
    from core.model.loading import load_tokenizer
    from core.training.config import prepare_examples, split
    from core.training.datasets import parse_dataset

    settings = load_settings()
    dataset = parse_dataset(dataset_path.name, dataset_path.read_bytes())
    tokenizer = load_tokenizer(settings)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = prepare_examples(
        dataset.examples, tokenizer, config.max_length, settings.system_prompt
    )
    train_index, eval_index = split(len(examples), config.eval_fraction, config.seed)
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    train, held = [rows[i] for i in train_index], [rows[i] for i in eval_index]
    return settings, dataset, tokenizer, train, held


def run_plain(dataset_path: Path, config: TrainConfig) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from core.model.loading import prepare_model

    settings, _, tokenizer, train, held = prepared(dataset_path, config)
    set_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(prepare_model(settings.base_model, settings))
    model = get_peft_model(
        model,
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    with tempfile.TemporaryDirectory() as output:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=output,
                per_device_train_batch_size=config.batch_size,
                num_train_epochs=config.epochs,
                learning_rate=config.learning_rate,
                lr_scheduler_type="cosine",
                warmup_steps=1,
                logging_steps=1,
                save_strategy="no",
                seed=config.seed,
                report_to="none",
                disable_tqdm=True,
                use_cpu=True,
                dataloader_pin_memory=False,
            ),
            train_dataset=train,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    tokens = sum(len(r["input_ids"]) for r in train) * config.epochs
    return {
        "tokens_per_s": tokens / seconds,
        "train_s": seconds,
        "held_out_loss": held_out_loss(model, held, tokenizer, config.batch_size, bf16=False),
        "peak_mb": peak_mb(),
    }


def run_ours(dataset_path: Path, config: TrainConfig) -> dict:
    from core.training import jobs, worker
    from core.training.run_folder import ADAPTER_DIR, METADATA_FILE

    settings, dataset, tokenizer, train, held = prepared(dataset_path, config)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = settings.model_copy(update={"data_dir": Path(data_dir)})
        run_dir = jobs.create(settings, dataset, config, system_prompt=settings.system_prompt)
        worker.background()  # as the studio starts it: its priority, its share of the cores
        assert worker.run(run_dir) == "completed", (run_dir / "status.json").read_text()
        meta = json.loads((run_dir / ADAPTER_DIR / METADATA_FILE).read_text())
        status = json.loads((run_dir / "status.json").read_text())
        from peft import PeftModel

        spec = json.loads((run_dir / "config.json").read_text())
        base = worker.load_model(spec["model_path"], "float32", "cpu", False)
        model = PeftModel.from_pretrained(base, str(run_dir / ADAPTER_DIR))
        loss = held_out_loss(model, held, tokenizer, config.batch_size, bf16=False)
    tokens = sum(len(r["input_ids"]) for r in train) * config.epochs
    return {
        "tokens_per_s": tokens / meta["train_seconds"],
        "train_s": meta["train_seconds"],
        "tokens_counted": status.get("tokens"),
        "held_out_loss": loss,
        "peak_mb": peak_mb(),
        "dtype": spec["dtype"],
    }


def child(which: str, dataset: Path, config: TrainConfig) -> dict:
    command = [sys.executable, __file__, "--child", which, "--dataset", str(dataset)]
    command += ["--config", json.dumps(config.__dict__)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{which} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", choices=["ours", "plain"])
    parser.add_argument("--config")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds on tiny inputs, the same code path (the test command runs it)",
    )
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.batch_size = 0.05, 4
    if args.child:
        config = TrainConfig(**json.loads(args.config))
        result = (run_ours if args.child == "ours" else run_plain)(args.dataset, config)
        print(json.dumps(result))
        return

    config = TrainConfig(
        rank=8, alpha=16, epochs=args.epochs, batch_size=args.batch_size, learning_rate=5e-4
    )
    plain = child("plain", args.dataset, config)
    ours = child("ours", args.dataset, config)
    # bfloat16 steps learn a little less each than float32 ones (the small LoRA change is
    # rounded in the forward pass), so the same number of steps can end at a higher held-out
    # loss. Equal quality is what counts: train ours longer until it matches, and time that.
    matched, matched_epochs = ours, config.epochs
    for factor in () if args.quick else (1.25, 1.5, 2.0):
        if matched["held_out_loss"] <= plain["held_out_loss"] * 1.01:
            break
        matched_epochs = config.epochs * factor
        matched = child("ours", args.dataset, replace(config, epochs=matched_epochs))

    import torch

    from core.model.loading import load_chat_model

    parameters = sum(p.numel() for p in load_chat_model(load_settings()).model.parameters())
    rate = {name: matmul_gflops(name) for name in ("float32", ours["dtype"])}
    limit = {name: gflops * 1e9 / (4 * parameters) for name, gflops in rate.items()}
    print(
        json.dumps(
            {
                "bench": "train",
                "dataset": args.dataset.name,
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "threads": torch.get_num_threads(),
                "parameters": parameters,
                "ours": ours,
                "plain": plain,
                "ours_to_equal_loss": {**matched, "epochs": matched_epochs},
                "time_to_equal_loss_ratio": plain["train_s"] / matched["train_s"],
                "matmul_gflops": rate,
                "flop_limit_tokens_per_s": limit,
                "flop_fraction": ours["tokens_per_s"] / limit[ours["dtype"]],
                "flop_fraction_float32": ours["tokens_per_s"] / limit["float32"],
                "memory_ratio": ours["peak_mb"] / plain["peak_mb"],
                "ratio": ours["tokens_per_s"] / plain["tokens_per_s"],
                "target": 3.0,
            }
        )
    )


if __name__ == "__main__":
    main()
