"""The rules of an experiment config that relate two keys (config.py's schema checks each
key on its own, and only the two dates of [prepare.speeches] together); the loader applies
them once every layer is merged."""

from __future__ import annotations

import typing
from pathlib import Path

from ml_playground.config import DataConfig, ExperimentConfig
from ml_playground.errors import ConfigError


def check_rules(config: ExperimentConfig, file_of: typing.Callable[[str], Path]) -> None:
    """Rules that relate two keys; the message names both and the file of the first."""
    train = config.train

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"invalid config in {file_of(key)}: {message}")

    context_key, context = (
        ("train.hf_model.block_size", train.hf_model.block_size)
        if train.hf_model
        else ("train.model.block_size", train.model.block_size)
    )
    if train.data.block_size is not None:
        require(
            train.data.block_size <= context,
            "train.data.block_size",
            f"train.data.block_size = {train.data.block_size} must be <= {context_key} = {context}",
        )
    require(
        train.schedule.warmup_iters <= train.schedule.lr_decay_iters,
        "train.schedule.warmup_iters",
        f"train.schedule.warmup_iters = {train.schedule.warmup_iters} must be <= "
        f"train.schedule.lr_decay_iters = {train.schedule.lr_decay_iters}",
    )
    require(
        train.schedule.min_lr <= train.optim.learning_rate,
        "train.schedule.min_lr",
        f"train.schedule.min_lr = {train.schedule.min_lr} must be <= "
        f"train.optim.learning_rate = {train.optim.learning_rate}",
    )
    require(
        train.model.n_embd % train.model.n_head == 0,
        "train.model.n_embd",
        f"train.model.n_embd = {train.model.n_embd} must be divisible by "
        f"train.model.n_head = {train.model.n_head}",
    )
    model = train.model
    if model.arch == "llama":
        require(
            (model.n_embd // model.n_head) % 2 == 0,
            "train.model.n_embd",
            f"train.model.n_embd / n_head = {model.n_embd // model.n_head} must be even for "
            "arch = 'llama': rotary embeddings rotate pairs of values",
        )
        require(
            model.n_kv_head is None or model.n_head % model.n_kv_head == 0,
            "train.model.n_kv_head",
            f"train.model.n_head = {model.n_head} must be a multiple of "
            f"train.model.n_kv_head = {model.n_kv_head}",
        )
        require(
            not model.bias,
            "train.model.bias",
            "train.model.bias = true is not available with arch = 'llama' (it has no biases); "
            "remove the key",
        )
    require(
        train.optim.name != "muon" or train.hf_model is None,
        "train.optim.name",
        "train.optim.name = 'muon' is for GPTs trained from scratch, not for LoRA adapters "
        "on [train.hf_model]; use name = 'adamw'",
    )
    # Prepare writes these names and nothing reads others, so another name only breaks training.
    data = train.data
    names = {"train_bin": data.train_bin, "val_bin": data.val_bin, "meta_file": data.meta_file}
    for name, value in names.items():
        written = DataConfig.model_fields[name].default
        require(
            value == written,
            f"train.data.{name}",
            f"train.data.{name} = {value!r}: prepare always writes {written}; remove the key",
        )
    require(
        train.peft is None or train.hf_model is not None,
        "train.peft",
        "[train.peft] needs a [train.hf_model] section naming the base model",
    )
    require(
        config.prepare.source is None or config.prepare.dataset is None,
        "prepare.source",
        f"prepare.source = {config.prepare.source!r} (a built-in source) and prepare.dataset = "
        f"{config.prepare.dataset!r} (a registered preparer) both choose how to prepare; "
        "keep one",
    )
    require(
        config.prepare.records_path is None or config.prepare.hf_dataset is None,
        "prepare.hf_dataset",
        "set either prepare.records_path (JSONL files) or prepare.hf_dataset (a datasets "
        "dataset), not both",
    )
