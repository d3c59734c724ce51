"""The Hugging Face + LoRA backend of the training loop: build the model, its loss, its save.

A pretrained model is loaded from the hub (or a local folder), its embeddings fitted to
the dataset's tokenizer (structure tokens added at prepare time), and LoRA adapters are
applied (or loaded from out_dir/adapters/last to resume). Only the adapters train. The
loop itself is train/loop.py's, the one the from-scratch GPT runs through; what this
module adds is the model, the next-token loss of a batch, writing adapters folders
(checkpoint.py, into run_folder.py's slots) and, on request, the merged model afterwards.

Under torchrun or `accelerate launch` the loop's rules hold: the peft model is wrapped in
DistributedDataParallel (only its trainable parameters take part), each rank draws its own
batches, and only rank 0 writes (adapters, tokenizer, meta.json, logs). The tokens are the
dataset folder's train.bin and val.bin (with their masks for chat records), tokenized at
prepare time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ml_playground import atomic, checkpoint, run_folder
from ml_playground.checkpoint import TrainingState
from ml_playground.config import ExperimentConfig, HFModelConfig, PeftConfig
from ml_playground.data.dataset_folder import META_FILE, TOKENIZER_DIR
from ml_playground.data.dataset_meta import DatasetMeta, RecordFormat, read_meta
from ml_playground.data.record_split import mask_file, token_file
from ml_playground.device import Precision, seed_everything
from ml_playground.distributed import Ranks, ranks_from_env
from ml_playground.errors import CheckpointError, DataError
from ml_playground.finetune.dropout import install_shared_dropout
from ml_playground.finetune.hub import ModelSource, Tokenizer, load_tokenizer
from ml_playground.finetune.loss import next_token_loss_for
from ml_playground.finetune.model import (
    apply_lora,
    choose_gradient_checkpointing,
    enable_gradient_checkpointing,
    fit_embeddings,
    keep_adapter_inputs_in,
    load_adapters,
    load_base,
    merge_adapters,
    read_adapter_config,
    save_weights,
    weights_dtype,
)
from ml_playground.run_folder import HFRunMeta, Slot
from ml_playground.sample.hf import load_trained
from ml_playground.train.loop import (
    Run,
    TokenFiles,
    TrainSummary,
    assemble_run,
    train,
    trainable_names,
    training_session,
)


def train_lora(config: ExperimentConfig, *, ranks: Ranks | None = None) -> TrainSummary:
    """Fine-tune (or resume fine-tuning) the model the config describes.

    `ranks` defaults to what the launcher (torchrun, accelerate launch) put in the
    environment.
    """
    ranks = ranks or ranks_from_env()
    runtime = config.train.runtime
    with training_session(config.train, ranks) as precision:
        summary = train(build_lora_run(config, precision, ranks))
        hf = config.train.hf_model
        if hf is not None and hf.save_merged and ranks.is_main and not runtime.eval_only:
            print(f"merged model written to {_write_merged(config, hf)}")
        return summary


def build_lora_run(config: ExperimentConfig, precision: Precision, ranks: Ranks) -> Run:
    """Dataset, tokenizer, tokens, model; resumed from adapters/last if it holds a state."""
    train_config, runtime = config.train, config.train.runtime
    hf = train_config.hf_model
    assert hf is not None  # the pipeline only sends configs with [train.hf_model] here
    peft = train_config.peft or PeftConfig()
    seed_everything(runtime.seed)  # the same fresh adapters on every rank
    dataset_dir = train_config.data.dataset_dir
    meta = read_meta(dataset_dir / META_FILE)
    record_format = _check_dataset_matches(meta, hf, dataset_dir)
    tokenizer = load_tokenizer(ModelSource.local(dataset_dir / TOKENIZER_DIR))
    last = run_folder.adapters_dir(runtime.out_dir, run_folder.LAST)
    resume = checkpoint.resumable_state(last)
    if resume is not None and peft.enabled:
        saved_lora = read_adapter_config(last)  # a damaged folder stops here, before loading
        if ranks.is_main:
            _announce_saved_lora(peft, saved_lora, last)
    run_meta = HFRunMeta(
        **record_format.record_format(),
        base_model=hf.model_name,
        revision=hf.revision,
        vocab_size=len(tokenizer),
        lora=peft.enabled,
    )
    if resume is not None:
        _check_same_run(run_meta, runtime.out_dir)
    dtype = weights_dtype(hf, runtime)
    model, checkpointing = _build_model(
        hf,
        peft,
        tokenizer,
        record_format,
        resume_from=last if resume else None,
        dtype=dtype,
        micro_batch_tokens=train_config.data.batch_size * train_config.block_size,
        device=precision.device,
    )
    if precision.uses_autocast and precision.dtype == dtype:
        # Base and autocast agree: adapter inputs stay in that dtype (peft would copy them
        # to float32 per adapter and call, and autocast copy them back for the matmul).
        keep_adapter_inputs_in(model)
    if install_shared_dropout(model) is not None and ranks.is_main:
        print("LoRA dropout: one mask per input tensor and pass, shared by its adapters")
    loss, plain_because = next_token_loss_for(model)
    if ranks.is_main:
        print(f"gradient checkpointing: {checkpointing}")
        if plain_because is not None:
            print(f"loss: full-vocabulary logits in float32, since {plain_because}")
    if resume is not None and resume.trainable != trainable_names(model):
        raise CheckpointError(
            f"the adapters in {last} train other parameters than this config "
            "([train.peft] changed); move the folder away to start fresh"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    def write(slots: tuple[Slot, ...], state: TrainingState) -> Path:
        folders = [
            checkpoint.save_adapters(
                runtime.out_dir, slot, lambda folder: save_weights(model, folder), state
            )
            for slot in slots
        ]
        return folders[0]

    run = assemble_run(
        train_config,
        precision,
        ranks,
        model=model,
        files=TokenFiles(
            dataset_dir / token_file("train"),
            dataset_dir / token_file("val"),
            meta.dtype,
            len(tokenizer),
            train_mask=dataset_dir / mask_file("train") if meta.masked else None,
            val_mask=dataset_dir / mask_file("val") if meta.masked else None,
        ),
        block_size=train_config.block_size,
        loss=loss,
        write=write,
        description=(
            f"fine-tuning {hf.model_name}: {trainable / 1e6:.2f}M of {total / 1e6:.1f}M "
            f"parameters train ({'LoRA' if peft.enabled else 'all weights'})"
        ),
        resume=resume,
        resume_source=str(last),
    )
    if ranks.is_main:
        # Sampling and export read the tokenizer and meta from out_dir, never dataset_dir.
        run_folder.copy_tokenizer(dataset_dir / TOKENIZER_DIR, runtime.out_dir)
        run_folder.write_run_meta(runtime.out_dir, run_meta)
    return run


def _build_model(
    hf: HFModelConfig,
    peft: PeftConfig,
    tokenizer: Tokenizer,
    meta: RecordFormat,
    *,
    resume_from: Path | None,
    dtype: torch.dtype,
    micro_batch_tokens: int,
    device: torch.device,
) -> tuple[nn.Module, str]:
    """The trainable model: base + fresh or resumed adapters, or the whole (resumed)
    model; and whether gradient checkpointing is on, and why, as the start line says it."""
    if not peft.enabled and resume_from is not None:
        model = load_base(hf, ModelSource.local(resume_from), dtype=dtype)
    else:
        model = load_base(hf, ModelSource.from_config(hf), dtype=dtype)
        fit_embeddings(model, len(tokenizer), init_new_rows=resume_from is None)
    model.config.use_cache = False  # pyright: ignore[reportUnknownMemberType] - untyped library; no KV cache while training
    checkpointing, why = choose_gradient_checkpointing(
        hf.gradient_checkpointing, model, micro_batch_tokens, device, dtype
    )
    if checkpointing:
        enable_gradient_checkpointing(model)
    said = f"{'on' if checkpointing else 'off'} ({why})"
    if not peft.enabled:
        return model, said
    if resume_from is not None:
        return load_adapters(model, resume_from, trainable=True), said
    new_ids = tokenizer.convert_tokens_to_ids(list(meta.structure_tokens))
    return apply_lora(model, peft, hf.model_name, new_ids), said


def _announce_saved_lora(peft: PeftConfig, fields: Mapping[str, object], folder: Path) -> None:
    """Resumed adapters keep the LoRA settings they were created with; say where they differ."""
    for key in ("r", "lora_alpha", "lora_dropout", "bias"):
        configured: object = getattr(peft, key)
        if key in fields and fields[key] != configured:
            print(
                f"resume: train.peft.{key} = {fields[key]!r} from {folder} "
                f"(config says {configured!r})"
            )


def _check_dataset_matches(meta: DatasetMeta, hf: HFModelConfig, dataset_dir: Path) -> RecordFormat:
    """The dataset's record format, once its tokenizer is the base model's."""
    folder, record_format = meta.hf_tokenizer, meta.record_format
    if folder is None or record_format is None:
        raise DataError(
            f"dataset {dataset_dir} was prepared with the {meta.tokenizer.describe()} "
            f"tokenizer, not {hf.model_name}'s; set its [prepare] for fine-tuning and run "
            "`ml-playground prepare` again"
        )
    if (folder.base_model, folder.revision) != (hf.model_name, hf.revision):
        raise DataError(
            f"dataset {dataset_dir} was prepared with the tokenizer of {folder.base_model} but "
            f"train.hf_model.model_name is {hf.model_name}; run `ml-playground prepare` again"
        )
    return record_format


def _check_same_run(wanted: HFRunMeta, out_dir: Path) -> None:
    saved = run_folder.read_run_meta_of(out_dir, HFRunMeta)
    if saved is None:
        raise CheckpointError(
            f"{run_folder.meta_file(out_dir)} is missing beside the adapters it describes; "
            f"{run_folder.START_OVER}"
        )
    if (saved.base_model, saved.vocab_size, saved.lora) != (
        wanted.base_model,
        wanted.vocab_size,
        wanted.lora,
    ):
        raise CheckpointError(
            f"{out_dir} holds a run of {saved.base_model} (vocabulary {saved.vocab_size}, "
            f"{'LoRA' if saved.lora else 'all weights'}) but the config asks for "
            f"{wanted.base_model} (vocabulary {wanted.vocab_size}, "
            f"{'LoRA' if wanted.lora else 'all weights'}); use another out_dir or move it away"
        )


def _write_merged(config: ExperimentConfig, hf: HFModelConfig) -> Path:
    """out_dir/merged: the sampled adapters folded into the base, as a transformers model."""
    runtime = config.train.runtime
    trained = load_trained(
        runtime.out_dir, hf, dtype=weights_dtype(hf, runtime), require_adapters=True
    )
    merged = merge_adapters(trained.model)
    target = run_folder.merged_dir(runtime.out_dir)
    with atomic.atomic_directory(target) as staging:
        merged.save_pretrained(str(staging))  # pyright: ignore[reportUnknownMemberType] - untyped library
        trained.tokenizer.save_pretrained(str(staging))
    return target
