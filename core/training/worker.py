"""The training worker: `python -m core.training.worker RUN_DIR [--resume]`, one process per run.

It reads the run folder (core.training.run_folder), trains a LoRA adapter with transformers' Trainer
and PEFT, and reports through `status.json`. It never runs inside the app's process.

Why it is faster than a plain Trainer + PEFT recipe (measured in bench/train.py):
- per-batch padding, and batches of examples of similar length (length grouping) when random
  batches would be mostly padding;
- the vocabulary projection and the loss run on the answer tokens only, the only ones that count;
- on CPUs with native bfloat16 (and on GPUs) the frozen base weights are bfloat16 and the matrix
  products run in bfloat16 (autocast), while the LoRA weights and their optimizer stay float32;
- LoRA dropout draws its random mask 16 bits at a time on CPU (core.training.dropout): PEFT's
  `nn.Dropout` took 28% of a step there;
- eager attention on CPU: PyTorch's CPU flash kernel is slower for rows of a few hundred tokens.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from peft.helpers import disable_input_dtype_casting
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from core import cores, files
from core.errors import InvalidInputError, is_disk_full
from core.model.chat import Message
from core.training import check, run_folder
from core.training.config import (
    Example,
    TrainConfig,
    eval_steps,
    padding_share,
    passes,
    preflight,
    prepare_examples,
    sampling_strategy,
    split,
    total_steps,
    with_system_prompt,
)
from core.training.datasets import last_turns
from core.training.dropout import speed_up_lora_dropout
from core.training.progress import Progress, log, rank, world

CHECK_TOKENS = 48  # the longest answer of the after-training check
OOM_HINT = (
    "Training ran out of memory. Choose a smaller batch size or a shorter maximum length in "
    "Advanced, then start again."
)
NICENESS = 10
DISK_FULL_HINT = (
    "The disk filled up: training stopped and no adapter was kept from this run. Your other "
    "adapters are untouched. Free some space, then start again."
)


def run(run_dir: Path, resume: bool = False) -> str:
    """Train the run in `run_dir` to its end and return the final state. The user's mistakes and
    running out of memory end as a failed run with a plain message, never as a traceback."""
    spec = run_folder.RunSpec.load(run_dir)
    previous = run_folder.read_status(run_dir)
    status = run_folder.StatusWriter(  # in a distributed run, the first process writes it
        run_dir,
        {
            **previous,
            "run_id": spec.run_id,
            "state": "loading",
            "message": "Loading the model",
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "started": previous.get("started") if resume else time.time(),
            "error": None,
        },
        write=rank() == 0,
    )
    try:
        state = _train(run_dir, spec, status, resume)
    except (MemoryError, torch.OutOfMemoryError):
        state = _fail(status, OOM_HINT)
    except InvalidInputError as error:
        state = _fail(status, str(error))
    except Exception as error:  # the worker must always leave a final status
        traceback.print_exc()
        if is_disk_full(error):
            state = _fail(status, DISK_FULL_HINT)
        elif any(words in str(error).lower() for words in ("out of memory", "not enough memory")):
            state = _fail(status, OOM_HINT)
        else:
            state = _fail(status, f"Training stopped with an error: {str(error)[:300]}")
    finally:
        status.close()
    return state


def _fail(status: run_folder.StatusWriter, message: str) -> str:
    log(message)
    status.update(state="failed", message=message, error=message)
    return "failed"


def load_model(model_path: str, dtype: str, device: str, trust_remote_code: bool) -> Any:
    return AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        attn_implementation="eager" if device == "cpu" else "sdpa",
    ).to(device)  # type: ignore[arg-type]  # transformers types .to() narrower than torch


def with_lora(model: Any, config: TrainConfig) -> Any:
    model.config.use_cache = False
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=config.lora_targets(),
            task_type="CAUSAL_LM",
        ),
    )
    speed_up_lora_dropout(peft_model)
    return peft_model


def _rows(
    run_dir: Path, spec: run_folder.RunSpec, config: TrainConfig
) -> tuple[Any, list[dict[str, list[int]]], list[dict[str, list[int]]]]:
    """The tokenizer, and the training and held-out rows (each with answer tokens to learn)."""
    tokenizer = AutoTokenizer.from_pretrained(
        spec.model_path, local_files_only=True, trust_remote_code=spec.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = prepare_examples(
        run_folder.read_dataset(run_dir), tokenizer, config.max_length, spec.system_prompt
    )
    check = preflight(examples, config)
    if check.blockers:
        raise InvalidInputError(" ".join(check.blockers))
    train_index, eval_index = split(len(examples), config.eval_fraction, config.seed)
    train_rows = [_row(examples[i]) for i in train_index if examples[i].answer_tokens]
    eval_rows = [_row(examples[i]) for i in eval_index if examples[i].answer_tokens]
    return tokenizer, train_rows, eval_rows


def _arguments(
    run_dir: Path,
    spec: run_folder.RunSpec,
    config: TrainConfig,
    steps: int,
    lengths: list[int],
    held_out: bool,
) -> TrainingArguments:
    """Cosine schedule, held-out loss and a checkpoint at the same steps, batches of similar
    lengths when random ones would be mostly padding."""
    every = eval_steps(steps)[0]
    strategy = sampling_strategy(lengths, config.batch_size, config.seed)
    log(
        f"random batches would be {padding_share(lengths, config.batch_size, config.seed):.0%} "
        f"padding: {strategy.replace('_', ' ')} batches"
    )
    return TrainingArguments(
        output_dir=str(run_dir / run_folder.CHECKPOINTS_DIR),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        max_steps=steps,  # the passes, or min_steps on a small dataset (config.total_steps)
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        train_sampling_strategy=strategy,
        logging_steps=1,
        eval_strategy="steps" if held_out else "no",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,
        prediction_loss_only=True,
        bf16=spec.dtype == "bfloat16",
        use_cpu=spec.device == "cpu",
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=spec.device != "cpu",
        remove_unused_columns=False,
        # Several processes (torchrun): the Trainer's data parallelism, gloo between CPUs.
        ddp_backend="gloo" if world() > 1 and spec.device == "cpu" else None,
        ddp_find_unused_parameters=False if world() > 1 else None,
    )


def _checkpoint_to_resume(run_dir: Path, progress: Progress) -> str:
    """The last complete checkpoint; saves a kill cut short are removed."""
    complete = run_folder.complete_checkpoints(run_dir)
    if not complete:
        raise InvalidInputError("There is no complete checkpoint to resume this run from.")
    checkpoint = str(complete[-1])
    for folder in (run_dir / run_folder.CHECKPOINTS_DIR).glob("checkpoint-*"):
        if folder not in complete:  # every process of a distributed run may clear it
            shutil.rmtree(folder, ignore_errors=True)
    progress.trim_history(int(checkpoint.rsplit("-", 1)[-1]))
    log(f"resuming from {checkpoint}")
    return checkpoint


def _train(
    run_dir: Path, spec: run_folder.RunSpec, status: run_folder.StatusWriter, resume: bool
) -> str:
    config = spec.config.validate()
    set_seed(config.seed)
    if (run_dir / run_folder.CANCEL_FILE).exists():
        status.update(state="cancelled", message="Cancelled before training started")
        return "cancelled"
    tokenizer, train_rows, eval_rows = _rows(run_dir, spec, config)
    model = with_lora(
        load_model(spec.model_path, spec.dtype, spec.device, spec.trust_remote_code), config
    )
    # Several processes split every epoch between them (each sees its share of the rows).
    rows_each = math.ceil(len(train_rows) / world())
    steps = total_steps(rows_each, config)
    lengths = [len(row["input_ids"]) for row in train_rows]
    arguments = _arguments(run_dir, spec, config, steps, lengths, bool(eval_rows))
    progress = Progress(run_dir, status, steps)
    trainer = AnswerOnlyTrainer(
        model=model,
        args=arguments,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=[progress, FairThreads(share())],
    )
    trainer.counter = progress
    checkpoint = _checkpoint_to_resume(run_dir, progress) if resume else None
    if checkpoint is None and eval_rows:
        status.update(state="training", message="Measuring the held-out loss before training")
        trainer.evaluate()  # the starting point of the held-out curve (recorded by on_log)
    status.update(
        state="training",
        message="Training",
        total_steps=steps,
        total_epochs=round(passes(rows_each, config), 2),
        train_rows=len(train_rows),
        eval_rows=len(eval_rows),
    )
    bf16 = arguments.bf16
    log(f"training on {len(train_rows)} examples: {steps} steps on {spec.device}, bf16 {bf16}")
    started = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    # Several processes leave their group together, through the Trainer's accelerator: one that
    # left alone closed its links while the first still held them open, and the first could die
    # before it saved the adapter ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if progress.cancelled:
        status.update(state="cancelled", message="Cancelled: no adapter was kept")
        return "cancelled"
    if rank() != 0:  # every process holds the same weights: the first one saves them
        return "completed"
    train_s = time.time() - started
    status.update(state="saving", message="Checking the tuned model on held-out examples")
    checked = _check(run_dir, spec, config, model, tokenizer)
    status.update(state="saving", message="Saving the adapter")
    _save_adapter(run_dir, spec, model, status, train_s, checked)
    shutil.rmtree(run_dir / run_folder.CHECKPOINTS_DIR, ignore_errors=True)
    status.update(state="completed", message="Finished", eta_s=0.0, finished=time.time())
    log("finished")
    return "completed"


def _check(
    run_dir: Path, spec: run_folder.RunSpec, config: TrainConfig, model: Any, tokenizer: Any
) -> check.Check | None:
    """Ask the held-out examples of the base and the tuned model (core.training.check)."""
    examples = run_folder.read_dataset(run_dir)
    train_index, eval_index = split(len(examples), config.eval_fraction, config.seed)
    held_out = [examples[i] for i in eval_index][: check.MOST_EXAMPLES]
    if not held_out:
        return None

    prompts = []
    for messages in held_out:
        cut = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(with_system_prompt(messages[:cut], spec.system_prompt))
    model.eval()
    tuned = _answers(model, tokenizer, prompts)
    with model.disable_adapter():
        base = _answers(model, tokenizer, prompts)
    asked, expected = zip(*(last_turns(m) for m in held_out), strict=True)
    trained_questions, trained_answers = zip(
        *(last_turns(examples[i]) for i in train_index), strict=True
    )
    found = check.compare(asked, expected, base, tuned, trained_answers, trained_questions)
    if found is not None:
        log(found.sentence)
    return found


def _answers(model: Any, tokenizer: Any, prompts: list[list[Message]]) -> list[str]:
    """Greedy answers of up to CHECK_TOKENS tokens, in one batch."""
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    batch = batch.to(model.device)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=CHECK_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        text = tokenizer.decode(row, skip_special_tokens=True).strip()
        cut = tokenizer.eos_token_id not in row and len(row) >= CHECK_TOKENS
        answers.append(text + " …" if cut and text else text)
    return answers


def _row(example: Example) -> dict[str, list[int]]:
    return {"input_ids": example.input_ids, "labels": example.labels}


def _save_adapter(
    run_dir: Path,
    spec: run_folder.RunSpec,
    model: Any,
    status: run_folder.StatusWriter,
    train_s: float,
    checked: check.Check | None = None,
) -> None:
    """Write the adapter beside the run, then move it into place in one step: a kill during the
    save leaves a `.partial` folder that nothing reads, never a damaged adapter."""
    partial = run_dir / f"{run_folder.ADAPTER_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial, safe_serialization=True)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)  # a full disk: give back what it took
        raise
    (partial / "README.md").unlink(missing_ok=True)  # PEFT's empty model card: noise here
    data = status.data
    train_loss, eval_loss = data.get("train_loss") or [], data.get("eval_loss") or []
    metadata = {
        "name": spec.name,
        "run_id": spec.run_id,
        "base_model": spec.base_model,
        "dataset_name": spec.dataset_name,
        "dataset_hash": spec.dataset_hash,
        "dataset_shape": spec.dataset_shape,
        "system_prompt": spec.system_prompt,
        "preset": spec.preset,
        "settings": asdict(spec.config),
        "train_rows": data.get("train_rows"),
        "eval_rows": data.get("eval_rows"),
        "final_train_loss": train_loss[-1][1] if train_loss else None,
        "final_eval_loss": eval_loss[-1][1] if eval_loss else None,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "duration_s": time.time() - float(data.get("started") or time.time()),
        "train_seconds": train_s,
        "check": checked.to_dict() if checked is not None else None,
        "created": time.time(),
    }
    files.atomic_write_json(partial / run_folder.METADATA_FILE, metadata)
    partial.replace(run_dir / run_folder.ADAPTER_DIR)


class AnswerOnlyTrainer(Trainer):
    """Computes the vocabulary projection and the loss for answer tokens only.

    A plain causal-LM loss projects every position onto the whole vocabulary (49 k entries for
    the default model) and then ignores the prompt positions; here they are never computed.
    """

    counter: Any = None

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs["labels"]
        mask = inputs.get("attention_mask")
        if self.counter is not None and model.training:  # every process trains as many
            self.counter.tokens += (
                int(mask.sum()) if mask is not None else labels.numel()
            ) * world()
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            # Data parallel: the forward must go through DDP's wrapper for the gradients to be
            # shared, so the Trainer's own loss is used (all positions projected).
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        base = model.get_base_model()
        if getattr(base.config, "final_logit_softcapping", None) is not None:
            loss = model(**inputs).loss  # models with extra logit processing: the plain way
        else:
            # The Trainer's mixed precision wraps the model's forward, which this bypasses; and
            # LoRA weights are float32: without the second context PEFT casts every activation.
            with self.accelerator.autocast(), disable_input_dtype_casting(model):
                hidden = base.get_decoder()(
                    input_ids=inputs["input_ids"], attention_mask=mask
                ).last_hidden_state
            target = labels[:, 1:]
            keep = target != -100
            logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
            loss = torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
        return (loss, {"loss": loss}) if return_outputs else loss


def probe(model_path: str, dtype: str, device: str, trust_remote_code: bool = False) -> float:
    """Training tokens per second on this machine, from a few steps on random tokens."""
    torch.manual_seed(0)
    model = with_lora(load_model(model_path, dtype, device, trust_remote_code), TrainConfig())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    length = min(128, getattr(model.config, "max_position_embeddings", 128))
    ids = torch.randint(0, model.config.vocab_size, (8, length), device=device)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        with (
            torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"),
            disable_input_dtype_casting(model),
        ):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - start)
    return ids.numel() / min(timings[1:])


_share: cores.Share | None = None


def share() -> cores.Share:
    """This process's share of the machine: the cores other processes leave free (the studio
    answering, other runs), at most its part of them when several processes train together."""
    global _share
    if _share is None:
        _share = cores.Share(most=max(1, cores.count() // world()))
    return _share


class FairThreads(TrainerCallback):
    """Before every step, as many threads as the cores others left free since the last step.

    On our 2-core machines training on both cores is 1.4 times faster than on one (the worker's
    probe: 411 against 297 tokens/s), and while nobody asks the studio is idle. While it answers,
    it keeps a core busy and the next step trains on the other one; the step that was running
    when the question came finishes at the lower priority (background), so the answer hardly
    waits for it."""

    def __init__(self, share: cores.Share) -> None:
        self.share = share

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        threads = self.share.threads_now()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def background() -> None:
    """Training is background work: people asking questions in the studio come first.

    Measured with bench/load.py (four browser sessions asking the arena during a fine-tune, two
    cores): with the worker as it was, its thread team and the studio's took turns on the cores
    and both crawled (answers 6.6 times slower than with no training, 11 training tokens/s).
    At the lowest priority the answers were as fast as ever but training stood still for as long
    as anyone asked. At a middling priority, with the worker on the cores the studio leaves free
    (FairThreads), training keeps moving. The worker runs in a session of its own (it outlives a
    restart of the studio), and Linux weighs each session's processes as one group (autogroup):
    the niceness that counts is the group's, so both are set."""
    torch.set_num_threads(share().threads)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    with contextlib.suppress(OSError):  # not Linux, or autogroup off: the nice above is enough
        Path("/proc/self/autogroup").write_text(str(NICENESS))


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--probe"]:
        torch.set_num_threads(share().threads)  # measured as it will train
        model_path, dtype, device, trust = argv[2:6]
        print(json.dumps({"tokens_per_s": probe(model_path, dtype, device, trust == "1")}))
        return 0
    run_dir = Path(next(a for a in argv[1:] if not a.startswith("--")))
    background()
    state = run(run_dir, resume="--resume" in argv)
    return 0 if state in ("completed", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
