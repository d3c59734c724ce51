"""The from-scratch GPT backend of the training loop: build the model, its loss, its save.

The dataset's meta.json says which tokenizer and vocabulary; the model arguments come
from [train.model], except that a resumed checkpoint's always win. Checkpoints are
ckpt_last.pt / ckpt_best.pt (run_folder.py; the final slot is ckpt_last.pt); out_dir/meta.json
is a `GPTRunMeta` (the tokenizer, its vocabulary and the dataset), so sampling and export
need only out_dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ml_playground import checkpoint, run_folder
from ml_playground.checkpoint import Checkpoint, TrainingState
from ml_playground.config import ExperimentConfig, ModelConfig
from ml_playground.data.dataset_meta import DatasetMeta, read_meta
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.device import Precision, seed_everything
from ml_playground.digest import file_digest
from ml_playground.distributed import Ranks, ranks_from_env
from ml_playground.errors import CheckpointError, DataError
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.run_folder import GPTRunMeta, Slot
from ml_playground.train.loop import (
    Run,
    TokenFiles,
    TrainSummary,
    assemble_run,
    train,
    training_session,
)


def train_gpt(config: ExperimentConfig, *, ranks: Ranks | None = None) -> TrainSummary:
    """Train (or resume) the GPT the config describes; returns where it ended.

    `ranks` defaults to what the launcher (torchrun) put in the environment.
    """
    ranks = ranks or ranks_from_env()
    with training_session(config.train, ranks) as precision:
        return train(build_gpt_run(config, precision, ranks))


def build_gpt_run(config: ExperimentConfig, precision: Precision, ranks: Ranks) -> Run:
    """Dataset meta, model and batches; restored from ckpt_last.pt if there is one."""
    train_config, runtime = config.train, config.train.runtime
    data = train_config.data
    seed_everything(runtime.seed)  # the same initial weights on every rank
    meta_path = data.dataset_dir / data.meta_file
    meta = read_meta(meta_path)
    tokenizer = _spec_tokenizer(meta, meta_path)
    last_path = run_folder.checkpoint_file(runtime.out_dir, run_folder.LAST)
    # load_trained refuses an out_dir of an older format before its meta.json is rewritten.
    resume = checkpoint.load_trained(runtime.out_dir, last_path) if last_path.exists() else None
    if resume is not None:
        _check_same_tokenizer(tokenizer, meta_path, resume, last_path)
    model_config = _model_config(train_config.model, meta, resume, announce=ranks.is_main)
    model = GPT(model_config)
    if resume is not None:
        checkpoint.load_weights(model, resume.model, last_path)
    settings = config.model_dump(mode="json")

    def write(slots: tuple[Slot, ...], state: TrainingState) -> Path:
        saved = Checkpoint(
            model=model.state_dict(),
            state=state,
            model_args=model_config,
            config=settings,
            tokenizer=tokenizer,
        )
        paths = run_folder.checkpoint_files(runtime.out_dir, slots)
        for path in paths:
            checkpoint.save(path, saved)
        return paths[0]

    run = assemble_run(
        train_config,
        precision,
        ranks,
        model=model,
        files=TokenFiles(
            data.dataset_dir / data.train_bin,
            data.dataset_dir / data.val_bin,
            meta.dtype,
            meta.vocab_size,
        ),
        block_size=min(train_config.block_size, model_config.block_size),
        loss=gpt_loss,
        write=write,
        description=(
            f"training {model.num_parameters() / 1e6:.2f}M parameters ({model_config.arch})"
        ),
        resume=None if resume is None else resume.state,
        resume_source=str(last_path),
        compile_model=runtime.compile,
    )
    if ranks.is_main:
        # Sampling and export read the tokenizer from out_dir, never from dataset_dir.
        runtime.out_dir.mkdir(parents=True, exist_ok=True)
        run_meta = GPTRunMeta(
            tokenizer=tokenizer,
            vocab_size=meta.vocab_size,
            dataset_dir=str(data.dataset_dir),
            dataset_sha256=file_digest(meta_path),
        )
        run_folder.write_run_meta(runtime.out_dir, run_meta)
    return run


def gpt_loss(model: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The GPT computes its (chunked) cross-entropy itself when given targets."""
    loss: torch.Tensor = model(x, y)
    return loss


def _spec_tokenizer(meta: DatasetMeta, meta_path: Path) -> TokenizerSpec:
    """The char or tiktoken tokenizer a from-scratch GPT trains with."""
    if meta.tokenizer_spec is None:
        raise DataError(
            f"dataset {meta_path} was prepared with the Hugging Face tokenizer of "
            f"{meta.tokenizer.describe()}, which a from-scratch GPT cannot train with; set "
            "[train.hf_model] to fine-tune, or prepare a char or tiktoken dataset"
        )
    return meta.tokenizer_spec


def _check_same_tokenizer(
    tokenizer: TokenizerSpec, meta_path: Path, resume: Checkpoint, ckpt_path: Path
) -> None:
    saved = resume.tokenizer
    if saved != tokenizer:
        raise CheckpointError(
            f"dataset {meta_path} uses tokenizer {tokenizer.describe()} but checkpoint "
            f"{ckpt_path} was trained with {saved.describe()}; prepare the matching dataset "
            "or move the checkpoint away to train fresh"
        )


def _model_config(
    model: ModelConfig, meta: DatasetMeta, resume: Checkpoint | None, *, announce: bool
) -> GPTConfig:
    """Model arguments from the config, except that a resumed checkpoint's always win."""
    if model.vocab_size is not None and model.vocab_size < meta.vocab_size:
        raise DataError(
            f"train.model.vocab_size = {model.vocab_size} is smaller than the dataset's "
            f"vocabulary ({meta.vocab_size}); remove the key or raise it"
        )
    # [train.model] holds exactly the model arguments, the vocabulary defaulting to the data's.
    wanted = GPTConfig.model_validate(
        {**model.model_dump(), "vocab_size": model.vocab_size or meta.vocab_size}
    )
    if resume is None:
        return wanted
    saved = resume.model_args
    for key, value in saved.to_dict().items():
        configured = wanted.to_dict().get(key)
        if configured != value and announce:
            print(f"resume: model.{key} = {value} from the checkpoint (config says {configured})")
    return saved
