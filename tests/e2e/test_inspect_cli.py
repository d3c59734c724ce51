"""`ml-playground inspect` from the command line, on every kind of prepared dataset.

Chat records are prepared in-process as qwen_chat_lora's preparer does (its tiny.toml
names a tiny Qwen2-style chat model saved in tmp_path), then inspected through the CLI
(`inspect qwen_chat_lora --exp-config tiny.toml`); stdout is a pipe here, so the targets
stand between the plain markers, except in the one test that gives it a terminal.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

import pytest

from ml_playground.config_loader import load_config
from ml_playground.inspect_windows import TARGET_CLOSE, TARGET_COLOUR, TARGET_OPEN
from tests.cli_helpers import Cli, assert_one_error_line
from tests.experiments import char_gpt, chat_settings, prepare, speeches_lora
from tests.finetune_helpers import (
    QWEN2_GENERATION_TEMPLATE,
    QWEN2_TEMPLATE,
    TinyModels,
    build_chat_model,
    conversation,
    write_jsonl,
)
from tests.toml_helpers import write_toml

TIMEOUT = 300  # seconds; a loaded machine imports torch and transformers slowly
CONFIG = "tiny.toml"
CHAT = "qwen_chat_lora"
MARKED = re.compile(re.escape(TARGET_OPEN) + "(.*?)" + re.escape(TARGET_CLOSE), re.DOTALL)
# The generation template with <|im_end|> moved out of the part that trains.
END_OF_TURN_LEFT_OUT = QWEN2_GENERATION_TEMPLATE.replace(
    "{{- message['content'] + '<|im_end|>' }}{% endgeneration %}",
    "{{- message['content'] }}{% endgeneration %}{{- '<|im_end|>' }}",
)
# Qwen2's shape, but the system message is never rendered.
SYSTEM_DROPPED = (
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def inspect_cli(cwd: Path) -> Cli:
    """The CLI in `cwd`, colours left to the terminal test (NO_COLOR unset)."""
    return Cli(cwd, env={"NO_COLOR": None}, timeout=TIMEOUT)


def run_cli(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return inspect_cli(cwd).run(*arguments)


def chat_dataset(
    folder: Path,
    tiny_models: TinyModels,
    template: str,
    records: list[dict[str, object]],
    extra: dict[str, str | int] | None = None,
) -> Path:
    """qwen_chat_lora's tiny.toml in `folder`, prepared from `records` with `template` (in
    this process, as its preparer does: a CLI start less per test)."""
    from ml_playground.data.chat_records import prepare_chat_dataset  # noqa: PLC0415 - heavy
    from ml_playground.finetune.hub import tokenizer_loader  # noqa: PLC0415 - heavy

    model = build_chat_model(folder / "chat-model", tiny_models, "qwen2", template)
    write_jsonl(folder / "chats.jsonl", records)
    config = write_toml(folder / CONFIG, chat_settings(model) | dict(extra or {}))
    loaded = load_config(config, folder)
    assert loaded.config.train.hf_model is not None
    prepare_chat_dataset(loaded.config, tokenizer_loader(loaded.config.train.hf_model))
    return folder


def inspect_chat(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(folder, "inspect", CHAT, "--exp-config", CONFIG, *extra)
    assert result.returncode == 0, result.stderr
    return result


CONVERSATIONS = [conversation(f"Frage {i}?", f"Antwort {i}.") for i in range(6)]


@pytest.fixture(scope="module")
def chats(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Path:
    """Six conversations in Qwen2's template, windows long enough to hold whole turns."""
    folder = tmp_path_factory.mktemp("chats").resolve()
    return chat_dataset(
        folder, tiny_models, QWEN2_TEMPLATE, CONVERSATIONS, {"train.hf_model.block_size": 100}
    )


@pytest.fixture(scope="module")
def piped(chats: Path) -> subprocess.CompletedProcess[str]:
    """`inspect --n 6` of the six conversations, stdout a pipe (one run for two tests)."""
    return inspect_chat(chats, "--n", "6")


def test_inspect_marks_the_assistant_turn_and_its_end_of_turn_token_as_targets_not_the_user(
    chats: Path, piped: subprocess.CompletedProcess[str]
) -> None:
    out = piped.stdout
    assert "chat records (messages)" in out
    assert re.search(r"^train\s+5\s+", out, re.MULTILINE)
    assert out.count("--- window ") == 6
    targets = MARKED.findall(out)
    assert any(re.fullmatch(r"Antwort \d\.<\|im_end\|>\n", target) for target in targets), targets
    for target in targets:
        assert "Frage" not in target and "<|im_start|>" not in target
    # Every user turn shown is outside the markers.
    unmarked = MARKED.sub("", out)
    assert re.search(r"<\|im_start\|>user\nFrage \d\?<\|im_end\|>", unmarked)
    assert f"from {chats / 'chats.jsonl'}:" in out
    assert "checks: no warnings" in out


def test_inspect_into_a_pipe_writes_the_plain_markers_and_no_escape_codes(
    piped: subprocess.CompletedProcess[str],
) -> None:
    assert "\x1b" not in piped.stdout
    assert f"between {TARGET_OPEN} and {TARGET_CLOSE}" in piped.stdout
    assert MARKED.search(piped.stdout)


def test_inspect_on_a_terminal_colours_the_targets_instead(chats: Path) -> None:
    primary, replica = pty.openpty()
    arguments = ("inspect", CHAT, "--exp-config", CONFIG)
    with inspect_cli(chats).started_on_terminal(replica, *arguments) as run:
        os.close(replica)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal closes when the process ends (EIO)
                break
            if not chunk:
                break
            shown += chunk
        assert run.wait(timeout=TIMEOUT) == 0, shown.decode(errors="replace")
    os.close(primary)
    text = shown.decode("utf-8", errors="replace")
    assert TARGET_COLOUR in text
    assert TARGET_OPEN not in text


def test_a_template_that_leaves_the_end_of_turn_token_out_of_the_mask_gets_the_warning(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    folder = chat_dataset(tmp_path.resolve(), tiny_models, END_OF_TURN_LEFT_OUT, CONVERSATIONS)

    result = inspect_chat(folder)

    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.stdout
    assert "the end-of-turn token '<|im_end|>'" in warnings[0]
    assert "not a target in 6 of 6 records" in warnings[0]
    assert (
        f"(first: {folder / 'datasets' / 'train.bin'}#1 (from {folder / 'chats.jsonl'}:"
        in (warnings[0])
    )


def test_a_template_that_drops_the_system_message_gets_the_same_text_warnings(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    records = [
        conversation("Frage?", "Antwort.", system="Sei kurz."),
        conversation("Frage?", "Antwort.", system="Sei ausführlich."),
        *CONVERSATIONS,
    ]
    folder = chat_dataset(tmp_path.resolve(), tiny_models, SYSTEM_DROPPED, records)

    result = inspect_chat(folder)

    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    chats = folder / "chats.jsonl"
    assert any(
        f"different conversations as the same text 1 time(s) (first: {chats}:1 and {chats}:2)"
        in line
        for line in warnings
    ), warnings
    assert any("differ only in their system message" in line for line in warnings), warnings
    assert not any("differ only in what the user says" in line for line in warnings), warnings


def test_inspect_shows_speech_records_with_their_place_in_the_prepared_split(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    root = tmp_path.resolve()
    speeches_lora(root, tiny_models.gemma3)

    result = run_cli(root, "inspect", str(root), "--n", "2")

    assert result.returncode == 0, result.stderr
    assert "speech records" in result.stdout
    assert f"of the record at {root / 'datasets' / 'train.bin'}#" in result.stdout
    assert "record lengths in tokens: median" in result.stdout
    assert "checks: no warnings" in result.stdout


def test_inspect_shows_a_text_corpus_as_one_stream_of_targets(tmp_path: Path) -> None:
    loaded = char_gpt(tmp_path.resolve())
    prepare(loaded)

    result = run_cli(tmp_path, "inspect", str(tmp_path.resolve()), "--n", "2")

    assert result.returncode == 0, result.stderr
    assert "text corpus" in result.stdout
    assert re.search(r"^train\s+-\s+18,000\s+18,000\s+100\.0%", result.stdout, re.MULTILINE)
    assert result.stdout.count("--- window ") == 2


def test_inspect_before_prepare_is_one_error_line_saying_to_prepare(tmp_path: Path) -> None:
    char_gpt(tmp_path.resolve())

    line = assert_one_error_line(run_cli(tmp_path, "inspect", str(tmp_path.resolve())))

    assert "no prepared dataset to inspect" in line
    assert f"run `ml-playground prepare {tmp_path.resolve()}`" in line
    assert not (tmp_path / "datasets").exists()


def test_a_window_count_below_one_is_one_error_line(tmp_path: Path) -> None:
    char_gpt(tmp_path.resolve())

    line = assert_one_error_line(run_cli(tmp_path, "inspect", str(tmp_path), "--n", "0"))

    assert "--n" in line
