"""LoRA fine-tuning on chat records: prepare -> pack -> train, with the loss on answers only.

In-process, with the tiny Qwen2 and Gemma3 models of tests/finetune_helpers.py given the
family's turn tokens and a chat template of the family's shape, on CPU in float32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground import run_folder
from ml_playground.data.batches import BatchSampler
from ml_playground.data.chat_records import prepare_chat_dataset
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.dataset_meta import read_meta
from ml_playground.finetune.hub import ModelSource, load_causal_lm, load_tokenizer
from ml_playground.finetune.loss import plain_next_token_loss
from ml_playground.train.hf import train_lora
from tests.experiments import chat_settings, load
from tests.finetune_helpers import (
    ADAPTER_FILE,
    GEMMA_TEMPLATE,
    QWEN2_TEMPLATE,
    Family,
    TinyModels,
    build_chat_model,
    conversation,
    prepared_split,
    write_jsonl,
)

TEMPLATES = {"qwen2": QWEN2_TEMPLATE, "gemma3": GEMMA_TEMPLATE}


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_a_tiny_model_trains_lora_steps_on_a_messages_jsonl(
    tmp_path: Path, tiny_models: TinyModels, family: Family
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, family, TEMPLATES[family])
    chats = [
        conversation(f"Wer spricht jetzt, Nummer {i}?", f"Herr Kollege {i}, Sie haben das Wort.")
        for i in range(16)
    ]
    write_jsonl(tmp_path / "chats.jsonl", chats)
    config = load(tmp_path, chat_settings(model)).config
    prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))
    out_dir = config.train.runtime.out_dir

    summary = train_lora(config)

    assert summary.iter_num == 6
    assert math.isfinite(summary.best_val_loss)
    assert (run_folder.adapters_dir(out_dir, run_folder.FINAL) / ADAPTER_FILE).is_file()
    # Training read the dataset folder's token files and masks; nothing is packed in out_dir.
    assert not (out_dir / "packed").exists()
    dataset_dir = config.prepare.dataset_dir
    for split in ("train", "val"):
        tokens = np.fromfile(dataset_dir / f"{split}.bin", dtype=np.uint16)
        mask = np.fromfile(dataset_dir / f"{split}.mask.bin", dtype=np.uint8)
        assert len(mask) == len(tokens)
        assert 0 < mask.sum() < len(mask)
    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["base_model"] == str(model)
    assert meta["structure_tokens"] == []


ASKED = "Wer hat das Wort?"
ANSWER = "Herr Kollege, Sie haben das Wort."


def record_loss_and_gradient(
    folder: Path, model_dir: Path, messages: Sequence[dict[str, str]]
) -> tuple[float, torch.Tensor]:
    """Prepare a dataset whose train split is this one conversation, and take the
    loss and the gradient of the model's last layer on the window that covers it."""
    other = conversation("Und dann?", "Ich danke Ihnen.")
    write_jsonl(folder / "chats.jsonl", [{"messages": list(messages)}, other])
    config = load(folder, chat_settings(model_dir)).config
    prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model_dir)))
    dataset_dir = config.prepare.dataset_dir
    meta = read_meta(dataset_dir / META_FILE)
    assert meta.records is not None and meta.records["train"] == 1
    ids, _ = prepared_split(dataset_dir, "train")  # the one conversation
    block = len(ids) - 1
    sampler = BatchSampler(
        dataset_dir / "train.bin",
        meta.dtype,
        block,
        1,
        mode="sequential",
        mask=dataset_dir / "train.mask.bin",
    )
    x, y = sampler.next_batch()
    model = load_causal_lm(
        ModelSource.local(model_dir), dtype=torch.float32, attn_implementation="eager"
    )
    last = list(model.parameters())[-1]
    loss = plain_next_token_loss(model, x, y)
    (gradient,) = torch.autograd.grad(loss, [last])
    return float(loss.detach()), gradient


def test_the_loss_counts_the_answer_and_not_the_users_tokens(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)

    def loss_of(name: str, follow_up: str, answer: str = ANSWER) -> tuple[float, torch.Tensor]:
        # The follow-up question ends the conversation: its tokens are targets only, and
        # context for nothing that trains, so only the mask decides whether they count.
        messages = [
            {"role": "user", "content": ASKED},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": follow_up},
        ]
        return record_loss_and_gradient(tmp_path / name, model, messages)

    loss, gradient = loss_of("base", "Und was sagt die Regierung dazu?")
    other_user_loss, other_user_gradient = loss_of("other-user", "Meine Damen und Herren!")
    other_answer_loss, other_answer_gradient = loss_of(
        "other-answer", "Herr Kollege, jetzt.", answer="Das ist eine Frage der Gerechtigkeit."
    )

    assert other_user_loss == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(other_user_gradient, gradient)
    assert other_answer_loss != pytest.approx(loss, rel=1e-3)
    assert not torch.allclose(other_answer_gradient, gradient)
