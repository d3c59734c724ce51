"""Experiment folders for tests: one builder per kind of experiment, nowhere else.

Each builder writes a real config.toml (through tests/toml_helpers.py, the one TOML writer)
into a folder the test passes in (its tmp_path), never into the source tree, and takes
the test's changes as dotted keys or whole tables (`{"export.ollama": {"enabled": True}}`)
laid over its own small settings. The kinds:

- a character-level GPT trained from scratch on Tiny Shakespeare (`char_gpt`), a copy
  of a packaged experiment (`copy_experiment`), or a folder with its own prepare.py
  (`scripted_experiment`);
- a saved GPT: a checkpoint in out/ as training leaves it, to sample, chat or export
  (`saved_gpt`, `saved_char_gpt`, `export_config`);
- LoRA on a tiny Hugging Face model: SpeakGer-style speech records (`speeches_lora`) or
  chat records (`chat_settings`, `chat_lora`), or only the config of a LoRA run over a
  model folder, for the export tests that put its adapters in place (`lora_run`).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from ml_playground.config import ExperimentConfig
from ml_playground.config_loader import LoadedConfig, load_config
from ml_playground.data.corpus import prepare_corpus
from ml_playground.data.sources import text_sources
from ml_playground.data.speeches.source import speech_sources
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.experiments import EXPERIMENTS_ROOT
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from tests.conftest import SHARED_DIR
from tests.export_helpers import random_gpt, save_checkpoint
from tests.finetune_helpers import (
    CHAT_TEMPLATES,
    Family,
    TinyModels,
    build_chat_model,
    conversation,
    copy_member_slices,
    speeches,
    write_jsonl,
    write_speeches_csv,
)
from tests.toml_helpers import Settings, TomlValue, write_toml

# --- a character-level GPT trained from scratch ------------------------------------------

SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"

# Small enough that a step takes milliseconds on one CPU thread, big enough to learn.
TINY_SETTINGS: Mapping[str, TomlValue] = {
    "prepare.tokenizer": "char",
    "prepare.raw_text_path": "input.txt",
    "train.model.n_layer": 2,
    "train.model.n_head": 2,
    "train.model.n_embd": 32,
    "train.model.block_size": 32,
    "train.model.dropout": 0.0,
    "train.data.batch_size": 8,
    "train.optim.learning_rate": 1e-2,
    "train.optim.beta2": 0.99,
    "train.schedule.warmup_iters": 5,
    "train.schedule.lr_decay_iters": 60,
    "train.schedule.min_lr": 1e-3,
    "train.runtime.max_iters": 60,
    "train.runtime.eval_interval": 20,
    "train.runtime.eval_iters": 4,
    "train.runtime.log_interval": 10,
    "train.runtime.device": "cpu",
    # Not the presets' "auto": a test computes the same on every machine.
    "train.runtime.dtype": "float32",
    "train.runtime.tensorboard_enabled": False,
    "sample.sample.start": "ROMEO:",
    "sample.sample.num_samples": 1,
    "sample.sample.max_new_tokens": 24,
    "sample.sample.stream": False,
}


def shakespeare_text(chars: int) -> str:
    """The first `chars` characters of Tiny Shakespeare (from the shared, offline copy)."""
    with SHAKESPEARE.open(encoding="utf-8") as handle:
        return handle.read(chars)


def char_gpt(
    folder: Path, changes: Settings | None = None, *, corpus_chars: int = 20_000
) -> LoadedConfig:
    """A char-level experiment in `folder`: input.txt, config.toml (tiny settings + changes).

    The corpus is only written when missing, so a test can put its own text there first.
    Paths stay at their defaults: datasets/ and out/ inside `folder`.
    """
    corpus = folder / "input.txt"
    if not corpus.exists():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_text(shakespeare_text(corpus_chars), encoding="utf-8")
    return reconfigure(folder, changes)


def reconfigure(folder: Path, changes: Settings | None = None) -> LoadedConfig:
    """Rewrite the experiment's config.toml as the tiny settings plus `changes`, and load it."""
    return load(folder, {**TINY_SETTINGS, **(changes or {})})


def prepare(loaded: LoadedConfig) -> None:
    """Tokenize the experiment's corpus into its dataset_dir (skipped when up to date)."""
    prepare_corpus(loaded.config, text_sources(loaded.config.prepare))


def copy_experiment(name: str, parent: Path) -> Path:
    """A copy of a packaged experiment folder at parent/name, without data or outputs.

    The folder keeps its name, so its prepare.py registers the preparer the CLI looks up.
    """
    target = parent / name
    shutil.copytree(
        EXPERIMENTS_ROOT / name,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "datasets", "out"),
    )
    return target


def scripted_experiment(
    parent: Path, name: str, settings: Settings | None = None, prepare_py: str | None = None
) -> Path:
    """An experiment folder parent/name: config.toml of `settings` and, when given, a
    prepare.py of the source `prepare_py` (which registers its preparer); returns it."""
    folder = parent / name
    folder.mkdir(parents=True)
    write_toml(folder / "config.toml", settings or {})
    if prepare_py is not None:
        (folder / "prepare.py").write_text(prepare_py, encoding="utf-8")
    return folder


# --- a saved GPT: out/ holds a checkpoint, as after training --------------------------------

SAMPLE_DEFAULTS: Mapping[str, TomlValue] = {
    "start": "ROMEO:",
    "temperature": 0.7,
    "top_k": 40,
    "top_p": 0.9,
}
# A run of a saved model on the CPU, out_dir beside the config.
SAVED_GPT_RUN: Mapping[str, TomlValue] = {
    "train.runtime.out_dir": "out",
    "train.runtime.device": "cpu",
}
# The same in float32, for tests that compare logits or greedy replies exactly.
CPU_FLOAT32_RUN: Mapping[str, TomlValue] = {**SAVED_GPT_RUN, "train.runtime.dtype": "float32"}
CHAT_CHARS = "\n abcdefghijklmnopqrstuvwxyz:"


def saved_gpt(
    folder: Path, model: GPT, spec: TokenizerSpec, settings: Settings | None = None
) -> Path:
    """An experiment folder whose out/ holds `model` as the best checkpoint, run as
    SAVED_GPT_RUN plus `settings`; returns the folder."""
    save_checkpoint(folder / "out", model, spec)
    write_toml(folder / "config.toml", {**SAVED_GPT_RUN, **(settings or {})})
    return folder


def export_config(
    folder: Path, export: Mapping[str, TomlValue], sample: Mapping[str, TomlValue] | None = None
) -> Path:
    """An experiment folder whose config points out_dir at `folder/out` and sets
    [export.ollama] to `export`; returns config.toml."""
    return write_toml(
        folder / "config.toml",
        {
            **SAVED_GPT_RUN,
            "sample.sample": {**SAMPLE_DEFAULTS, **(sample or {})},
            "export.ollama": export,
        },
    )


def saved_char_gpt(folder: Path, *, block_size: int, max_new_tokens: int, seed: int = 0) -> Path:
    """An experiment folder whose out/ holds a random character-level GPT over CHAT_CHARS
    (no end-of-text token: every reply runs to max_new_tokens), sampled greedily on the
    CPU; returns its config.toml."""
    spec = TokenizerSpec(kind="char", vocab=tuple(CHAT_CHARS))
    args = GPTConfig(
        vocab_size=len(CHAT_CHARS), block_size=block_size, n_layer=1, n_head=2, n_embd=16
    )
    sampling = {"temperature": 0.0, "max_new_tokens": max_new_tokens}
    settings = {**CPU_FLOAT32_RUN, "sample.sample": sampling}
    return saved_gpt(folder, random_gpt(args, seed), spec, settings) / "config.toml"


# --- LoRA on a tiny Hugging Face model -----------------------------------------------------


def lora_settings(model_dir: Path) -> dict[str, TomlValue]:
    """LoRA on the tiny model in `model_dir`: a whole run takes seconds on one CPU thread."""
    return {
        "prepare.dataset_dir": "datasets",
        "prepare.speeches.add_structure_tokens": True,
        "train.hf_model.model_name": str(model_dir),
        "train.hf_model.block_size": 32,
        "train.peft.r": 4,
        "train.peft.lora_alpha": 8,
        "train.peft.lora_dropout": 0.0,
        "train.data.batch_size": 4,
        "train.optim.learning_rate": 5e-3,
        "train.schedule.warmup_iters": 2,
        "train.schedule.lr_decay_iters": 20,
        "train.schedule.min_lr": 1e-4,
        "train.runtime.out_dir": "out",
        "train.runtime.max_iters": 6,
        "train.runtime.eval_interval": 3,
        "train.runtime.eval_iters": 2,
        "train.runtime.log_interval": 2,
        "train.runtime.device": "cpu",
        "train.runtime.dtype": "float32",
        "train.runtime.tensorboard_enabled": False,
        "sample.sample.start": "Sprecher:",
        "sample.sample.num_samples": 1,
        "sample.sample.max_new_tokens": 12,
        "sample.sample.stream": False,
    }


def load(folder: Path, settings: Settings) -> LoadedConfig:
    """Write `settings` as folder/config.toml and load it as the experiment in `folder`."""
    return load_config(write_toml(folder / "config.toml", settings), folder)


def speeches_lora(root: Path, model_dir: Path, overrides: Settings | None = None) -> LoadedConfig:
    """A prepared experiment in `root` on 24 SpeakGer-style speeches (preparing again is a
    no-op), fine-tuning the tiny model in `model_dir` with lora_settings plus `overrides`."""
    raw = root / "raw"
    if not raw.is_dir():
        write_speeches_csv(raw / "Bundestag.csv", speeches(24))
        copy_member_slices(raw)
    settings = lora_settings(model_dir) | {"prepare.raw_dir": "raw"}
    loaded = load(root, settings | dict(overrides or {}))
    prepare_speech_records(loaded.config, frozenset({".csv"}))
    return loaded


def prepare_speech_records(config: ExperimentConfig, suffixes: frozenset[str]) -> None:
    """What the speech experiments' preparers do: records with the base model's tokenizer."""
    from ml_playground.data.speeches.dataset import prepare_speech_dataset  # noqa: PLC0415
    from ml_playground.data.writer import require_hf_model  # noqa: PLC0415
    from ml_playground.finetune.hub import tokenizer_loader  # noqa: PLC0415 - heavy

    sources = speech_sources(config.prepare, suffixes)
    outcome = prepare_speech_dataset(config, sources, tokenizer_loader(require_hf_model(config)))
    print(outcome.message)


def chat_settings(model_dir: Path, records: str = "chats.jsonl") -> dict[str, TomlValue]:
    """lora_settings for a messages dataset read from `records`."""
    settings = lora_settings(model_dir) | {
        "prepare.records_path": records,
        "prepare.format": "messages",
        "train.runtime.eval_interval": 2,
        "sample.sample.start": "Hallo",
    }
    settings.pop("prepare.speeches.add_structure_tokens")
    return settings


def chat_lora(
    folder: Path,
    tiny_models: TinyModels,
    family: Family,
    settings: Settings | None = None,
    *,
    trained: bool = True,
) -> LoadedConfig:
    """An experiment in `folder` on eight short conversations with a chat model of
    `family` (the family's template), prepared and trained for a few LoRA steps unless
    `trained` is False; chat_settings plus `settings`."""
    from ml_playground.data.chat_records import prepare_chat_dataset  # noqa: PLC0415 - heavy
    from ml_playground.finetune.hub import ModelSource, load_tokenizer  # noqa: PLC0415 - as above
    from ml_playground.train.hf import train_lora  # noqa: PLC0415 - as above

    model = build_chat_model(folder / "model", tiny_models, family, CHAT_TEMPLATES[family])
    chats = [conversation(f"Wer spricht, Nummer {i}?", f"Herr Kollege {i}.") for i in range(8)]
    write_jsonl(folder / "chats.jsonl", chats)
    loaded = load(folder, chat_settings(model) | dict(settings or {}))
    if trained:
        prepare_chat_dataset(loaded.config, lambda: load_tokenizer(ModelSource.local(model)))
        train_lora(loaded.config)
    return loaded


def lora_run(folder: Path, base: Path, settings: Settings | None = None) -> Path:
    """config.toml of a LoRA run over the model folder `base`, out_dir beside it, in
    float32 (the export tests compare logits), plus `settings`; returns its path."""
    run: Settings = {
        "train.hf_model.model_name": str(base),
        "train.runtime.out_dir": "out",
        "train.runtime.dtype": "float32",
    }
    return write_toml(folder / "config.toml", {**run, **(settings or {})})
