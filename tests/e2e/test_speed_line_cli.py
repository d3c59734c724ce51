"""`sample` and `chat` end each reply with one line on stderr saying how fast it came, as
llama.cpp and `ollama run --verbose` do; stdout keeps only the text.

A random character-level GPT (tests/export_helpers.py) sampled greedily through the CLI in
a subprocess; the HF backend's chat gets the same line in tests/e2e/test_chat_cli.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.test_chat_cli import chat_cli, run_chat
from tests.experiments import saved_char_gpt

SPEED = re.compile(
    r"speed: prompt (\d+) tokens(?: x (\d+) rows)? at [\d,]+\.\d tokens/s, "
    r"generated (\d+) tokens at [\d,]+\.\d tokens/s"
)


def run_sample(folder: Path) -> subprocess.CompletedProcess[str]:
    return chat_cli(folder).run("sample", folder)


def test_sample_ends_with_one_speed_line_on_stderr_and_stdout_holds_only_the_text(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "gpt"
    saved_char_gpt(folder, block_size=32, max_new_tokens=6)

    result = run_sample(folder)

    assert result.returncode == 0, result.stderr
    (saved,) = (folder / "out" / "samples").glob("*.txt")
    assert result.stdout == saved.read_text(encoding="utf-8") + "\n"
    last = result.stderr.splitlines()[-1]
    match = SPEED.fullmatch(last)
    assert match is not None, last
    # The default prompt is one newline: one token; no stop id in a char vocabulary.
    assert match.groups() == ("1", None, "6")
    assert sum(bool(SPEED.search(line)) for line in result.stderr.splitlines()) == 1


def test_a_batch_of_samples_reports_its_rows_once(tmp_path: Path) -> None:
    folder = tmp_path / "gpt"
    config = saved_char_gpt(folder, block_size=32, max_new_tokens=5)
    with config.open("a", encoding="utf-8") as toml:  # [sample.sample] is its last table
        toml.write('num_samples = 3\nstart = "abc"\n')

    result = run_sample(folder)

    assert result.returncode == 0, result.stderr
    assert "speed:" not in result.stdout
    match = SPEED.fullmatch(result.stderr.splitlines()[-1])
    assert match is not None, result.stderr
    assert match.groups() == ("3", "3", "15")


def test_a_gpt_chat_says_how_fast_each_reply_came_after_it(tmp_path: Path) -> None:
    folder = tmp_path / "gpt"
    saved_char_gpt(folder, block_size=64, max_new_tokens=6)

    result = run_chat(folder, "romeo:\njuliet:\n/exit\n")

    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == 2 * 7  # the replies alone, as without the line
    speeds = [SPEED.fullmatch(line) for line in result.stderr.splitlines()]
    generated = [match.group(3) for match in speeds if match is not None]
    assert generated == ["6", "6"]
