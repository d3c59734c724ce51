"""`ml-playground chat` from the command line, with the user's lines piped into stdin.

`python -m ml_playground.cli chat <folder>`, cwd in tmp_path: a tiny Qwen2 chat fine-tune
trained in-process (tests/finetune_helpers.py), and a random character-level GPT checkpoint
(tests/export_helpers.py). What a reply should be comes from the same chat run in-process,
whose replies stream has nothing but replies in it.
"""

from __future__ import annotations

import contextlib
import io
import os
import pty
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ml_playground import run_folder
from ml_playground.config_loader import load_config
from ml_playground.sample.chat import HELP, Streams, chat
from ml_playground.sample.hf import load_hf
from tests.cli_helpers import Cli, assert_one_error_line, flip_a_tensor_byte
from tests.experiments import chat_lora, saved_char_gpt
from tests.finetune_helpers import TinyModels

EXIT_INTERRUPTED = 130
TIMEOUT = 300  # seconds; a loaded CI machine imports torch and transformers slowly
GREEDY = {"sample.sample.temperature": 0.0, "sample.sample.max_new_tokens": 8}


def chat_cli(folder: Path) -> Cli:
    """The CLI with cwd beside the experiment `folder`."""
    return Cli(folder.parent, timeout=TIMEOUT)


def run_chat(folder: Path, lines: str) -> subprocess.CompletedProcess[str]:
    return chat_cli(folder).run("chat", folder, input=lines)


def replies_in_process(folder: Path, lines: str) -> str:
    """What the chat writes to its replies stream for `lines`, run in this process."""
    config = load_config(folder / "config.toml", folder).config
    replies = io.StringIO()
    chat(config, load_hf(config), Streams(io.StringIO(lines), replies, io.StringIO()))
    return replies.getvalue()


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Path:
    folder = tmp_path_factory.mktemp("chat-cli") / "qwen"
    chat_lora(folder, tiny_models, "qwen2", GREEDY)
    return folder


def test_a_piped_chat_with_a_fine_tune_prints_only_the_replies_and_ends_at_eof(
    fine_tune: Path,
) -> None:
    lines = "Wer spricht?\nUnd dann?\n"

    result = run_chat(fine_tune, lines)

    assert result.returncode == 0, result.stderr
    expected = replies_in_process(fine_tune, lines)
    assert expected.count("\n") >= 2  # two replies, each ended by a newline
    assert result.stdout == expected
    adapters = fine_tune / "out" / "adapters" / "best"
    assert f"chat in the run's chat template: sampling from {fine_tune / 'model'} + {adapters}" in (
        result.stderr
    )
    assert HELP in result.stderr
    # Each reply is followed by how fast it came, on stderr (tests/e2e/test_speed_line_cli.py).
    assert result.stderr.count("speed: prompt ") == 2
    assert "> " not in result.stderr  # the prompt marker is for terminals only
    assert "Traceback" not in result.stderr


def test_reset_and_exit_in_a_piped_chat(fine_tune: Path) -> None:
    result = run_chat(fine_tune, "Wer spricht?\n/reset\nUnd dann?\n/exit\nNie gesendet.\n")

    assert result.returncode == 0, result.stderr
    # After /reset the second line is answered as a first one; after /exit nothing is.
    fresh = replies_in_process(fine_tune, "Wer spricht?\n") + replies_in_process(
        fine_tune, "Und dann?\n"
    )
    assert result.stdout == fresh
    assert "conversation reset" in result.stderr


def test_chat_with_flipped_adapter_bits_is_the_same_one_error_line_as_sample(
    fine_tune: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "damaged"
    shutil.copytree(fine_tune, folder, symlinks=True)
    best = run_folder.adapters_dir(folder / "out", run_folder.BEST)
    flip_a_tensor_byte(best / "adapter_model.safetensors")

    line = assert_one_error_line(run_chat(folder, "Wer spricht?\n"))

    assert f"{best / 'adapter_model.safetensors'} fails its integrity check" in line


# --- the from-scratch GPT ---------------------------------------------------------------------


def test_a_gpt_chat_continues_each_line_as_text(tmp_path: Path) -> None:
    folder = tmp_path / "gpt"
    saved_char_gpt(folder, block_size=64, max_new_tokens=6)

    result = run_chat(folder, "romeo:\njuliet:\n/exit\n")

    assert result.returncode == 0, result.stderr
    # No end-of-text in a char vocabulary: each reply is 6 characters and its newline.
    assert len(result.stdout) == 2 * 7
    assert result.stderr.startswith("plain continuation (no chat template)")


def test_chat_without_a_trained_model_is_one_error_line(tmp_path: Path) -> None:
    folder = tmp_path / "gpt"
    saved_char_gpt(folder, block_size=64, max_new_tokens=6)
    shutil.rmtree(folder / "out")

    line = assert_one_error_line(run_chat(folder, "romeo:\n"))

    assert str(folder / "out") in line


def test_a_reader_that_goes_away_ends_the_chat_quietly(tmp_path: Path) -> None:
    folder = tmp_path / "gpt"
    saved_char_gpt(folder, block_size=64, max_new_tokens=200)
    with chat_cli(folder).started("chat", folder, stdin=subprocess.PIPE) as process:
        assert process.stdin and process.stdout and process.stderr
        process.stdin.write("romeo:\n" * 50)
        process.stdin.close()

        assert process.stdout.read(1)  # like `| head -c 1`
        process.stdout.close()
        with process.stderr:
            stderr = process.stderr.read()  # to the end: until the chat has exited
        process.wait(timeout=TIMEOUT)

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipe" not in stderr


def test_ctrl_c_at_the_prompt_ends_the_chat_with_130(tmp_path: Path) -> None:
    folder = tmp_path / "gpt"
    saved_char_gpt(folder, block_size=64, max_new_tokens=6)
    # stdin held open: the chat waits for a line
    with chat_cli(folder).started("chat", folder, stdin=subprocess.PIPE) as process:
        assert process.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        while HELP not in process.stderr.readline():  # the last line before it reads stdin
            assert time.monotonic() < deadline and process.poll() is None, "the chat never started"

        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=TIMEOUT)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert stderr.splitlines()[-1].startswith("interrupted;")
    assert "Traceback" not in stderr


def test_at_a_terminal_the_typed_line_can_be_edited_with_the_arrow_keys(tmp_path: Path) -> None:
    """In a real terminal (a pty), "/eit", two steps left, "x" is the command /exit."""
    folder = tmp_path / "gpt"
    saved_char_gpt(folder, block_size=64, max_new_tokens=6)
    controller, terminal = pty.openpty()
    with (
        chat_cli(folder)
        .with_env(TERM="xterm")
        .started_on_terminal(terminal, "chat", folder) as process
    ):
        os.close(terminal)
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while HELP.encode() not in seen:
            running = process.poll() is None
            assert time.monotonic() < deadline and running, seen.decode(errors="replace")
            if select.select([controller], [], [], 1.0)[0]:
                seen += os.read(controller, 4096)

        left = b"\x1b[D"
        os.write(controller, b"/eit" + left + left + b"x\r")
        try:
            code = process.wait(timeout=60)
        finally:
            process.kill()
            with contextlib.suppress(OSError):
                while select.select([controller], [], [], 0.2)[0]:
                    seen += os.read(controller, 4096)
            os.close(controller)

    assert code == 0, seen.decode(errors="replace")
    assert b"unknown command" not in seen
