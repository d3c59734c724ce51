"""The LoRA benchmark's baseline: the plain transformers `Trainer` + peft loop a user
would write to fine-tune a model on a text file, with nothing of this project in it.

Tokenize the text, cut it into fixed windows whose labels are their inputs, load the
model, wrap it with peft's LoRA, and hand both to `Trainer` with logging, saving and
evaluation off. A callback clocks each optimizer step from `on_step_begin` to
`on_step_end` (forward, backward, clipping, AdamW, zeroing the gradients).

    python -m benchmarks.lora_trainer JOB_JSON   # one setting; prints one JSON line
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol, cast

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from benchmarks.lora import SEED, SideJob, SideResult, read_text_files
from benchmarks.memory import peak_rss_bytes


class TextTokenizer(Protocol):
    """What the baseline uses of a transformers tokenizer, which its stubs leave untyped."""

    eos_token_id: int

    def __call__(self, text: str) -> Mapping[str, list[int]]: ...


class TokenWindows(Dataset[dict[str, torch.Tensor]]):
    """Back-to-back windows of `block_size` tokens; the model shifts the labels itself."""

    def __init__(self, ids: list[int], block_size: int) -> None:
        count = len(ids) // block_size
        self.windows = torch.tensor(ids[: count * block_size]).view(count, block_size)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.windows[index]
        return {"input_ids": window, "labels": window}


class StepClock(TrainerCallback):
    """Wall time of every optimizer step, in order."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self._started)


def run_trainer(job: SideJob) -> SideResult:
    torch.set_num_threads(job.threads)
    tokenizer = cast(TextTokenizer, AutoTokenizer.from_pretrained(str(job.model_dir)))  # pyright: ignore[reportUnknownMemberType] - untyped library
    ids: list[int] = []
    for text in read_text_files(job.text_dir):
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    dtype = getattr(torch, job.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(job.model_dir), dtype=dtype)  # pyright: ignore[reportUnknownMemberType] - untyped library
    model.config.use_cache = False  # no KV cache while training, as fine-tuning guides say
    lora = LoraConfig(
        r=job.r,
        lora_alpha=job.lora_alpha,
        lora_dropout=job.lora_dropout,
        target_modules=list(job.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=str(job.experiment_dir / "trainer"),
        per_device_train_batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        lr_scheduler_type="constant",  # our side steps at a fixed rate too
        max_steps=job.total_steps,
        gradient_checkpointing=job.checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=job.dtype == "bfloat16",
        use_cpu=True,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        optim="adamw_torch",
        seed=SEED,
    )
    clock = StepClock()
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=TokenWindows(ids, job.block_size),
        callbacks=[clock],
    )
    output = trainer.train()  # pyright: ignore[reportUnknownMemberType] - untyped library
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return SideResult(
        step_seconds=tuple(clock.seconds[job.warmup_steps :]),
        peak_rss_bytes=peak_rss_bytes(),
        trainable_parameters=trainable,
        mean_loss=float(output.training_loss),
    )


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.lora_trainer JOB_JSON", file=sys.stderr)
        return 2
    print(run_trainer(SideJob.from_json(argv[0])).to_json())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
