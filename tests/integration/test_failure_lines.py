"""Each failure a user can cause is one `error:` line naming the right thing, exit 2, and
the files already there stay: through the real CLI in-process (`cli.main`), one test per
case of the class it belongs to (failed writes, user content that raises, names)."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
import safetensors.torch
import torch

from ml_playground import atomic, cli
from ml_playground.data.dataset_meta import read_meta
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.errors import ExportError
from ml_playground.export.chat_template import ollama_chat
from ml_playground.model.config import GPTConfig
from tests.cli_helpers import mounted_tmpfs
from tests.experiments import char_gpt, chat_lora, chat_settings, export_config
from tests.export_helpers import random_gpt, save_checkpoint
from tests.finetune_helpers import QWEN2_TEMPLATE, TinyModels, build_chat_model, chat_tokenizer
from tests.toml_helpers import write_toml

EXIT_USER_ERROR = 2
RAISING_TEMPLATE = "{% for m in messages %}{{ m.content }}{{ 1 / 0 }}{% endfor %}"

Snapshot = dict[str, bytes]


def snapshot(folder: Path) -> Snapshot:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one `error:` line, the last on
    stderr (status lines such as chat's opening may come before it)."""
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


def gpt_experiment(folder: Path) -> Path:
    """A prepared char-level experiment with a random checkpoint fitted to its tokenizer."""
    char_gpt(folder, {"prepare.source": "text"}, corpus_chars=4_000)
    assert cli.main(["prepare", str(folder)]) == 0
    meta = read_meta(folder / "datasets" / "meta.json")
    spec = meta.tokenizer_spec
    assert spec is not None
    args = GPTConfig(vocab_size=meta.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(folder / "out", random_gpt(args), spec)
    return folder


# --- failed writes ------------------------------------------------------------------------


def test_a_full_disk_while_prepare_writes_leaves_the_old_dataset_exactly_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = gpt_experiment(tmp_path / "exp")
    dataset_dir = folder / "datasets"
    before = snapshot(dataset_dir)
    with (folder / "input.txt").open("a", encoding="utf-8") as handle:
        handle.write("\nMore text, so the dataset must be prepared again.\n")
    real_fsync = os.fsync

    def full_at_val_bin(fd: int) -> None:
        # The staged copy's temporary file: ..val.bin.new.<random>.tmp
        if ".val.bin." in Path(f"/proc/self/fd/{fd}").readlink().name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_at_val_bin)
    line = one_error_line(["prepare", str(folder)], capsys)
    monkeypatch.undo()

    assert line.startswith(f"error: No space left on device: {dataset_dir / 'val.bin'}; ")
    assert snapshot(dataset_dir) == before  # meta.json included: the old dataset reads
    assert cli.main(["eval", str(folder)]) == 0


def test_a_short_write_during_export_is_one_line_naming_the_gguf_and_the_bundle_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exp"
    config = export_config(folder, {"enabled": True, "quant": "f16"})
    args = GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=32)
    save_checkpoint(
        folder / "out", random_gpt(args), TokenizerSpec(kind="tiktoken", encoding="gpt2")
    )
    assert cli.main(["export", str(folder)]) == 0
    export_dir = folder / "export"
    before = snapshot(export_dir)
    config.write_text(config.read_text(encoding="utf-8").replace('"f16"', '"q8_0"'), "utf-8")

    def short_write(writer: gguf.GGUFWriter, *args: object, **kwargs: object) -> None:
        # What numpy's tofile raises when the disk fills: no errno, no file name.
        raise OSError("1048576 requested and 4096 written")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", short_write)
    line = one_error_line(["export", str(folder)], capsys)

    assert line.startswith(
        f"error: 1048576 requested and 4096 written: {export_dir / 'model.gguf'}; the write "
        "was cut short"
    )
    assert snapshot(export_dir) == before
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith(".")) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs in tmp_path; skipped where this process may not mount one."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as disk:
        yield disk


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` up to `leave` free bytes."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(free - leave, 0))


def test_a_real_full_disk_during_export_is_one_line_naming_the_gguf_and_the_bundle_stays(
    tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exp"
    export_dir = small_disk / "export"
    config = export_config(folder, {"enabled": True, "quant": "f16", "export_dir": str(export_dir)})
    args = GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=32)
    save_checkpoint(
        folder / "out", random_gpt(args), TokenizerSpec(kind="tiktoken", encoding="gpt2")
    )
    assert cli.main(["export", str(folder)]) == 0
    before = snapshot(export_dir)
    config.write_text(config.read_text(encoding="utf-8").replace('"f16"', '"q8_0"'), "utf-8")
    fill(small_disk, leave=200_000)

    line = one_error_line(["export", str(folder)], capsys)

    assert line.startswith("error: ")
    assert f"{export_dir / 'model.gguf'}; " in line
    assert "free some space" in line
    assert snapshot(export_dir) == before
    assert sorted(path.name for path in small_disk.iterdir()) == ["export", "filler"]


def test_a_rust_library_failing_on_a_full_disk_is_an_os_error_naming_the_folder(
    small_disk: Path,
) -> None:
    # safetensors (adapters, merged weights) reports a full disk as SafetensorError.
    target = small_disk / "adapters" / "best"
    target.mkdir(parents=True)
    (target / "adapter_model.safetensors").write_bytes(b"old weights")
    fill(small_disk, leave=100_000)

    with (
        pytest.raises(OSError, match="No space left on device") as error,
        atomic.atomic_directory(target) as staging,
    ):
        safetensors.torch.save_file(  # pyright: ignore[reportUnknownMemberType] # its stub leaves PathLike unparametrized
            {"w": torch.zeros(1_000_000)}, str(staging / "adapter_model.safetensors")
        )

    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(target)
    assert snapshot(target) == {"adapter_model.safetensors": b"old weights"}
    assert sorted(path.name for path in target.parent.iterdir()) == ["best"]


# --- user content that raises ---------------------------------------------------------------


def test_eval_on_a_val_split_of_part_of_a_token_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = gpt_experiment(tmp_path / "exp")
    val = folder / "datasets" / "val.bin"
    val.write_bytes(val.read_bytes() + b"\x01")  # uint16 tokens and one byte more

    line = one_error_line(["eval", str(folder)], capsys)

    assert f"{val} has " in line and "not a whole number of uint16 tokens" in line


def test_list_marks_an_experiment_whose_readme_is_not_utf8_and_lists_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, readme in (
        ("latin", "Ein Experiment für Käse.\n".encode("latin-1")),
        ("fine", b"Fine.\n"),
    ):
        (tmp_path / name).mkdir()
        write_toml(tmp_path / name / "config.toml", {})
        (tmp_path / name / "Readme.md").write_bytes(readme)
    monkeypatch.setenv("ML_PLAYGROUND_EXPERIMENTS", str(tmp_path))

    assert cli.main(["list"]) == 0

    out = capsys.readouterr().out
    assert "latin" in out and "(Readme.md is not UTF-8; convert it to UTF-8)" in out
    assert "fine" in out and "Fine." in out
    assert "shakespeare" in out  # the bundled ones too


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_chat_input_that_is_not_utf8_is_named_as_such(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    errors: str,
) -> None:
    folder = gpt_experiment(tmp_path / "exp")
    piped = io.TextIOWrapper(io.BytesIO("Käse\n".encode("latin-1")), "utf-8", errors)
    monkeypatch.setattr(sys, "stdin", piped)

    line = one_error_line(["chat", str(folder)], capsys)

    assert line.startswith("error: the input is not UTF-8; ")


def test_a_chat_template_that_raises_in_chat_is_one_line_naming_the_template(
    tmp_path: Path,
    tiny_models: TinyModels,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "exp"
    greedy = {"sample.sample.temperature": 0.0, "sample.sample.max_new_tokens": 4}
    loaded = chat_lora(folder, tiny_models, "qwen2", greedy)
    tokenizer = loaded.config.train.runtime.out_dir / "tokenizer"
    _replace_template(tokenizer, RAISING_TEMPLATE)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Wer spricht?\n"))

    line = one_error_line(["chat", str(folder)], capsys)

    assert line.startswith(f"error: the chat template of {tokenizer} failed (ZeroDivisionError")


def _replace_template(tokenizer: Path, template: str) -> None:
    """Put `template` where transformers reads a saved tokenizer's chat template from."""
    jinja = tokenizer / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(template, encoding="utf-8")
        return
    config_path = tokenizer / "tokenizer_config.json"
    settings = json.loads(config_path.read_text(encoding="utf-8"))
    settings["chat_template"] = template
    config_path.write_text(json.dumps(settings), encoding="utf-8")


def test_a_chat_template_that_raises_in_export_is_one_line_naming_the_model() -> None:
    with pytest.raises(ExportError) as error:
        ollama_chat(chat_tokenizer("qwen2", RAISING_TEMPLATE), "out/tokenizer")

    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("cannot write the chat template of out/tokenizer as an Ollama")
    assert "fails rendering a plain conversation (ZeroDivisionError: division by zero)" in message


# --- error lines that name the right thing -------------------------------------------------


def test_train_on_a_half_prepared_chat_dataset_names_the_dataset_metadata(
    tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exp"
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    write_toml(folder / "config.toml", chat_settings(model))
    dataset_dir = folder / "datasets"
    dataset_dir.mkdir(parents=True)
    (dataset_dir / "train.bin").write_bytes(b"\x01\x00")

    line = one_error_line(["train", str(folder)], capsys)

    assert line.startswith(f"error: dataset metadata not found: {dataset_dir}")
    assert "speech" not in line


def test_an_unknown_tiktoken_encoding_in_a_checkpoint_names_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exp"
    export_config(folder, {"enabled": True})
    args = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    spec = TokenizerSpec(kind="tiktoken", encoding="o300k_future")
    path = save_checkpoint(folder / "out", random_gpt(args), spec)

    for verb in ("sample", "export"):
        line = one_error_line([verb, str(folder)], capsys)
        assert line.startswith(f"error: checkpoint {path} was written with tiktoken encoding")
        assert "'o300k_future'" in line


def test_a_raw_text_path_that_names_a_folder_says_it_is_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exp"
    char_gpt(folder, {"prepare.source": "text", "prepare.raw_text_path": "."})

    line = one_error_line(["prepare", str(folder)], capsys)

    assert line.startswith(f"error: prepare.raw_text_path {folder} is a folder, not a file; ")


def test_a_bad_speech_date_names_the_config_file_and_leaves_the_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = gpt_experiment(tmp_path / "exp")
    before = snapshot(folder / "datasets")
    config = folder / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + '\n[prepare.speeches]\ndate_from = "3.3.2020"\n',
        encoding="utf-8",
    )

    line = one_error_line(["prepare", str(folder)], capsys)

    assert line == (
        f"error: invalid config in {config}: prepare.speeches.date_from = '3.3.2020' is not a "
        "date; write it as YYYY-MM-DD"
    )
    assert snapshot(folder / "datasets") == before
