"""`ml-playground eval` from the command line, on a tiny trained GPT and a tiny LoRA run.

The runs are trained in-process (a tiny char GPT on Tiny Shakespeare, a tiny Qwen2 chat
model with LoRA on German conversations), then `python -m ml_playground.cli eval <folder>`
scores them in a subprocess, as a user runs it. Each number is checked against an
independent computation in the test: the model's own loss on the same windows, and bits
per byte from the bytes of the text.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812 - the conventional name

from ml_playground import checkpoint, run_folder
from ml_playground.config import ExperimentConfig
from ml_playground.data.tokenizer import CharTokenizer
from ml_playground.finetune.model import PEFT_DEPRECATION
from ml_playground.model.config import GPTConfig
from tests.cli_helpers import Cli, assert_one_error_line
from tests.experiments import char_gpt, chat_settings, load, prepare, saved_gpt
from tests.export_helpers import random_gpt
from tests.finetune_helpers import (
    QWEN2_TEMPLATE,
    TinyModels,
    build_chat_model,
    conversation,
    write_jsonl,
)

TIMEOUT = 300  # seconds; a loaded machine imports torch and transformers slowly
GPT_BLOCK = 32
LORA_BLOCK = 64
EVAL_DIR = "eval"


EvalRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_eval(bytecode_cache: Path) -> EvalRun:
    """`ml-playground eval FOLDER [extra]`, with cwd in the folder."""

    def run(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        cli = Cli(folder, bytecode_cache=bytecode_cache, timeout=TIMEOUT)
        return cli.run("eval", folder, *extra)

    return run


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The table eval prints, by model: its cells split on the runs of spaces between them."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    rows: dict[str, list[str]] = {}
    for line in lines[header + 1 :]:
        if line.startswith("fine-tuned - base"):
            rows["fine-tuned - base"] = line.removeprefix("fine-tuned - base").split()
            continue
        cells = [cell for cell in line.split("  ") if cell.strip()]
        if len(cells) == 5:
            rows[cells[0].strip()] = [cell.strip() for cell in cells[1:]]
    return rows


def assert_table_equals_json(stdout: str, result: dict[str, Any]) -> None:
    rows = table_rows(stdout)
    for score in result["scores"]:
        assert rows[score["model"]] == [
            f"{score['targets']:,}",
            f"{score['loss']:.4f}",
            f"{score['perplexity']:.4f}",
            f"{score['bits_per_byte']:.4f}",
        ]
    if result["difference"] is not None:
        diff = result["difference"]
        assert rows["fine-tuned - base"] == [
            f"{diff['loss']:.4f}",
            f"{diff['perplexity']:.4f}",
            f"{diff['bits_per_byte']:.4f}",
        ]


def read_json(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))


def window_starts(length: int, window: int) -> range:
    """Non-overlapping windows over `length` ids: each id after the first predicted once."""
    return range(0, length - 1, window)


# --- a from-scratch GPT --------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory: pytest.TempPathFactory) -> ExperimentConfig:
    """A tiny char GPT trained for 40 steps on Tiny Shakespeare; its folder holds config.toml."""
    from ml_playground.train.gpt import train_gpt  # noqa: PLC0415 - imports the trainer

    folder = tmp_path_factory.mktemp("gpt").resolve()
    loaded = char_gpt(folder, {"train.runtime.max_iters": 40})
    prepare(loaded)
    train_gpt(loaded.config)
    return loaded.config


def own_gpt_nll(config: ExperimentConfig, ids: np.ndarray[Any, Any]) -> float:
    """The checkpoint's summed loss over non-overlapping windows, computed here: its logits
    over the tokenizer's vocabulary, cross-entropy against the next id."""
    ckpt = checkpoint.load(run_folder.gpt_for_sampling(config.train.runtime.out_dir))
    from ml_playground.model.gpt import GPT  # noqa: PLC0415 - as the sampler builds it

    model = GPT(ckpt.model_args)
    model.load_state_dict(dict(ckpt.model))
    model.eval()
    vocab = ckpt.model_args.vocab_size
    total = 0.0
    with torch.no_grad():
        for start in window_starts(len(ids), GPT_BLOCK):
            window = torch.as_tensor(ids[start : start + GPT_BLOCK + 1].astype(np.int64))
            logits = model(window[None, :-1])[0, :, :vocab]
            total += float(F.cross_entropy(logits, window[1:], reduction="sum"))
    return total


def test_eval_of_a_gpt_scores_its_val_split_as_the_model_itself_does(
    run_eval: EvalRun, gpt_run: ExperimentConfig
) -> None:
    folder = gpt_run.train.runtime.out_dir.parent
    val = gpt_run.train.data.dataset_dir / "val.bin"
    ids = np.fromfile(val, dtype=np.uint16)

    result = run_eval(folder)

    assert result.returncode == 0, result.stderr
    saved = read_json(gpt_run.train.runtime.out_dir / EVAL_DIR / "val.json")
    assert_table_equals_json(result.stdout, saved)
    (score,) = saved["scores"]
    assert saved["evaluated"]["source"] == "val split"
    assert saved["evaluated"]["sha256"] == hashlib.sha256(val.read_bytes()).hexdigest()
    assert saved["evaluated"]["tokens"] == len(ids)
    assert score["targets"] == len(ids) - 1
    assert score["weights"] == str(gpt_run.train.runtime.out_dir / run_folder.BEST_FILE)
    expected = own_gpt_nll(gpt_run, ids)
    assert score["nll_nats"] == pytest.approx(expected, rel=1e-5)
    assert score["loss"] == pytest.approx(expected / (len(ids) - 1), rel=1e-5)
    # The val text is the corpus's tail (ASCII here); the first character is context only.
    corpus = (folder / "input.txt").read_text(encoding="utf-8")
    scored_text = corpus[len(corpus) - len(ids) + 1 :]
    assert saved["evaluated"]["bytes"] == len(scored_text.encode("utf-8"))
    assert score["bits_per_byte"] == pytest.approx(
        expected / math.log(2) / len(scored_text.encode("utf-8")), rel=1e-5
    )
    # 40 steps on Shakespeare beat guessing uniformly among the characters.
    assert score["perplexity"] < len(set(corpus))


def test_eval_text_scores_a_file_and_counts_its_bytes_after_the_first_character(
    run_eval: EvalRun, gpt_run: ExperimentConfig
) -> None:
    folder = gpt_run.train.runtime.out_dir.parent
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    file = folder / "lines.txt"
    file.write_text(text, encoding="utf-8")
    tokenizer = CharTokenizer.from_text((folder / "input.txt").read_text(encoding="utf-8"))
    ids = np.asarray(tokenizer.encode(text))

    result = run_eval(folder, "--text", "lines.txt")

    assert result.returncode == 0, result.stderr
    saved = read_json(gpt_run.train.runtime.out_dir / EVAL_DIR / "text" / "lines.json")
    assert_table_equals_json(result.stdout, saved)
    assert saved["evaluated"]["path"] == str(file)
    assert saved["evaluated"]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    # A char tokenizer has no start token: the first character is read, not predicted.
    assert saved["evaluated"]["bytes"] == len(text.encode("utf-8")) - 1
    expected = own_gpt_nll(gpt_run, ids)
    (score,) = saved["scores"]
    assert score["targets"] == len(text) - 1
    assert score["nll_nats"] == pytest.approx(expected, rel=1e-5)
    assert score["bits_per_byte"] == pytest.approx(
        expected / math.log(2) / (len(text.encode("utf-8")) - 1), rel=1e-5
    )


def test_a_bad_text_file_exits_2_and_leaves_the_saved_results_as_they_were(
    run_eval: EvalRun, gpt_run: ExperimentConfig
) -> None:
    folder = gpt_run.train.runtime.out_dir.parent
    results = gpt_run.train.runtime.out_dir / EVAL_DIR
    assert run_eval(folder).returncode == 0
    before = {path: path.read_bytes() for path in results.rglob("*.json")}
    (folder / "latin1.txt").write_bytes("Grüße".encode("latin-1"))

    line = assert_one_error_line(run_eval(folder, "--text", "latin1.txt"))

    assert f"--text file {folder / 'latin1.txt'} is not UTF-8 (byte 0xfc at offset 2)" in line
    assert {path: path.read_bytes() for path in results.rglob("*.json")} == before


# --- errors before anything is scored --------------------------------------------------------

CHARS = "abcdefghij \n"


def random_run(folder: Path) -> Path:
    """A folder with a config and a random char GPT checkpoint in out/, nothing prepared."""
    tokenizer = CharTokenizer(list(CHARS))
    model = random_gpt(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12))
    return saved_gpt(folder, model, tokenizer.spec, {"train.runtime.dtype": "float32"})


@pytest.mark.parametrize(
    ("file_bytes", "expected"),
    [
        (None, "--text file not found: {file}; give the path of a UTF-8 text file"),
        (b"", "--text file {file} is empty"),
        (b"\xff\xfeab", "--text file {file} is not UTF-8 (byte 0xff at offset 0)"),
        (b"a", "--text file {file} is 1 token(s) long; give at least 2 tokens"),
        (b"a?c", "character '?' (U+003F) is not in the char tokenizer's vocabulary"),
    ],
    ids=["missing", "empty", "not-utf8", "one-token", "unknown-character"],
)
def test_an_unusable_text_file_exits_2_in_one_line_naming_it(
    run_eval: EvalRun, tmp_path: Path, file_bytes: bytes | None, expected: str
) -> None:
    folder = random_run(tmp_path / "run")
    file = tmp_path / "input.txt"
    if file_bytes is not None:
        file.write_bytes(file_bytes)

    line = assert_one_error_line(run_eval(folder, "--text", str(file)))

    assert expected.format(file=file) in line
    assert not (folder / "out" / EVAL_DIR).exists()


def test_eval_without_a_trained_model_exits_2_naming_out_dir(
    run_eval: EvalRun, tmp_path: Path
) -> None:
    folder = random_run(tmp_path / "run")
    (folder / "out" / run_folder.BEST_FILE).unlink()

    line = assert_one_error_line(run_eval(folder))

    assert f"no checkpoint in {folder / 'out'}" in line


def test_eval_without_a_prepared_val_split_exits_2_saying_to_prepare(
    run_eval: EvalRun, tmp_path: Path
) -> None:
    folder = random_run(tmp_path / "run")

    line = assert_one_error_line(run_eval(folder))

    assert str(folder / "datasets" / "meta.json") in line
    assert "ml-playground prepare" in line


# --- a LoRA fine-tuning run ----------------------------------------------------------------

ANSWER = "Herr Kollege {i}, Sie haben das Wort."


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> ExperimentConfig:
    """The tiny Qwen2 chat model with LoRA, 30 steps on 20 German conversations."""
    from ml_playground.data.chat_records import prepare_chat_dataset  # noqa: PLC0415 - heavy
    from ml_playground.finetune.hub import ModelSource, load_tokenizer  # noqa: PLC0415 - heavy
    from ml_playground.train.hf import train_lora  # noqa: PLC0415 - heavy

    folder = tmp_path_factory.mktemp("lora").resolve()
    model = build_chat_model(folder / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    chats = [conversation(f"Wer spricht jetzt, Nummer {i}?", ANSWER.format(i=i)) for i in range(20)]
    write_jsonl(folder / "chats.jsonl", chats)
    settings = chat_settings(model) | {
        "train.hf_model.block_size": LORA_BLOCK,
        "train.runtime.max_iters": 30,
        "train.runtime.eval_interval": 10,
        "train.optim.learning_rate": 1e-2,
        "train.peft.extend_mlp_targets": True,
        "train.schedule.lr_decay_iters": 30,
    }
    config = load(folder, settings).config
    prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))
    train_lora(config)
    return config


def own_lora_nll(
    config: ExperimentConfig, ids: Sequence[int], counted: Sequence[int] | None
) -> tuple[float, float]:
    """(fine-tuned, base) summed loss over non-overlapping windows, from transformers' own
    loss of the base model with the best adapters loaded by peft, enabled and disabled."""
    from peft import PeftModel  # noqa: PLC0415 - heavy
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - heavy

    hf = config.train.hf_model
    assert hf is not None
    base = AutoModelForCausalLM.from_pretrained(hf.model_name, dtype=torch.float32)  # pyright: ignore[reportUnknownMemberType] - untyped library
    adapters = run_folder.adapters_dir(config.train.runtime.out_dir, run_folder.BEST)
    with warnings.catch_warnings():  # peft asks transformers for a deprecated attribute
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        model: Any = PeftModel.from_pretrained(base, str(adapters))  # pyright: ignore[reportUnknownMemberType] - untyped library
    model.eval()
    tensor = torch.tensor(ids)
    flags = torch.ones(len(ids), dtype=torch.bool) if counted is None else torch.tensor(counted) > 0

    def summed() -> float:
        total = 0.0
        for start in window_starts(len(ids), LORA_BLOCK):
            window = tensor[start : start + LORA_BLOCK + 1]
            labels = window.masked_fill(~flags[start : start + LORA_BLOCK + 1], -100)
            labels[0] = -100  # never predicted; transformers shifts the labels itself
            counted_here = int((labels != -100).sum())
            if counted_here:
                loss = model(input_ids=window[None], labels=labels[None]).loss
                total += float(loss) * counted_here
        return total

    with torch.no_grad():
        fine_tuned = summed()
        with model.disable_adapter():
            base_total = summed()
    return fine_tuned, base_total


def test_eval_of_a_lora_run_scores_the_answers_of_the_val_split_base_and_fine_tuned(
    run_eval: EvalRun, lora_run: ExperimentConfig
) -> None:
    out_dir = lora_run.train.runtime.out_dir
    dataset_dir = lora_run.prepare.dataset_dir  # eval reads the prepared val split
    ids = np.fromfile(dataset_dir / "val.bin", dtype=np.uint16)
    mask = np.fromfile(dataset_dir / "val.mask.bin", dtype=np.uint8)

    result = run_eval(out_dir.parent)

    assert result.returncode == 0, result.stderr
    saved = read_json(out_dir / EVAL_DIR / "val.json")
    assert_table_equals_json(result.stdout, saved)
    assert "assistant tokens only" in saved["evaluated"]["counted"]
    fine_tuned, base = saved["scores"]
    assert (fine_tuned["model"], base["model"]) == ("fine-tuned", "base (adapters off)")
    assert fine_tuned["weights"] == str(run_folder.adapters_dir(out_dir, run_folder.BEST))
    assert fine_tuned["targets"] == base["targets"] == int(mask[1:].sum()) < len(ids) - 1
    own_fine_tuned, own_base = own_lora_nll(lora_run, ids.tolist(), mask.tolist())
    assert fine_tuned["nll_nats"] == pytest.approx(own_fine_tuned, rel=1e-4)
    assert base["nll_nats"] == pytest.approx(own_base, rel=1e-4)
    assert saved["difference"]["loss"] == pytest.approx(fine_tuned["loss"] - base["loss"])
    # The targets that count are each val answer, "Herr Kollege N, Sie haben das Wort.", its
    # end of turn (a special token: no bytes) and the newline after it, as training counts.
    numbers = answer_numbers(lora_run)
    assert len(numbers) == int(np.count_nonzero(np.diff(mask[1:].astype(np.int8)) == 1))
    answer_bytes = sum(len(ANSWER.format(i=i).encode("utf-8")) + len(b"\n") for i in numbers)
    assert saved["evaluated"]["bytes"] == answer_bytes
    assert fine_tuned["bits_per_byte"] == pytest.approx(
        own_fine_tuned / math.log(2) / answer_bytes, rel=1e-4
    )


def answer_numbers(config: ExperimentConfig) -> list[int]:
    """The N of each val conversation's answer, read back from the prepared val records."""
    from ml_playground.finetune.hub import ModelSource, load_tokenizer  # noqa: PLC0415 - heavy

    tokenizer = load_tokenizer(ModelSource.local(config.train.runtime.out_dir / "tokenizer"))
    ids = np.fromfile(config.prepare.dataset_dir / "val.bin", dtype=np.uint16).tolist()
    text = tokenizer.decode(ids)
    return [i for i in range(20) if ANSWER.format(i=i) in text]


def test_fine_tuned_beats_base_on_training_like_text_by_the_models_own_loss(
    run_eval: EvalRun, lora_run: ExperimentConfig
) -> None:
    from ml_playground.finetune.hub import ModelSource, load_tokenizer  # noqa: PLC0415 - heavy

    out_dir = lora_run.train.runtime.out_dir
    text = " ".join(ANSWER.format(i=i) for i in (3, 7))
    file = out_dir.parent / "answers.txt"
    file.write_text(text, encoding="utf-8")
    tokenizer = load_tokenizer(ModelSource.local(out_dir / "tokenizer"))
    eos = tokenizer.eos_token_id
    assert eos is not None and tokenizer.bos_token_id is None
    # Qwen has no BOS: the file is read after end-of-text, so its first token counts too.
    ids = [eos, *tokenizer.encode(text, add_special_tokens=True)]

    result = run_eval(out_dir.parent, "--text", str(file))

    assert result.returncode == 0, result.stderr
    saved = read_json(out_dir / EVAL_DIR / "text" / "answers.json")
    assert_table_equals_json(result.stdout, saved)
    fine_tuned, base = saved["scores"]
    own_fine_tuned, own_base = own_lora_nll(lora_run, ids, None)
    assert fine_tuned["nll_nats"] == pytest.approx(own_fine_tuned, rel=1e-4)
    assert base["nll_nats"] == pytest.approx(own_base, rel=1e-4)
    assert saved["evaluated"]["bytes"] == len(text.encode("utf-8"))
    assert fine_tuned["bits_per_byte"] == pytest.approx(
        own_fine_tuned / math.log(2) / len(text.encode("utf-8")), rel=1e-4
    )
    assert fine_tuned["loss"] < base["loss"] - 0.3
    assert saved["difference"]["bits_per_byte"] < 0


def test_eval_of_a_lora_config_without_adapters_exits_2_saying_to_train(
    run_eval: EvalRun, tmp_path: Path, tiny_models: TinyModels
) -> None:
    folder = tmp_path.resolve()
    load(folder, chat_settings(tiny_models.qwen2))

    line = assert_one_error_line(run_eval(folder))

    assert f"no adapters in {folder / 'out' / 'adapters'}" in line
    assert "ml-playground train" in line
