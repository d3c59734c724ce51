"""`ml-playground compare` from the command line, on tiny runs trained in this process.

A GPT-2-style and a Llama-style char GPT train four steps each (with TensorBoard events);
`python -m ml_playground.cli compare <folder> <folder>` then reads them in a subprocess,
as a user runs it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ml_playground.compare import PLOT_FILE, TABLE_FILE
from tests.cli_helpers import assert_one_error_line, png_pixels, run_cli
from tests.experiments import char_gpt
from tests.run_helpers import trained_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/gpt2 and root/llama: two trained experiments on the same char corpus."""
    root = tmp_path_factory.mktemp("runs").resolve()
    for arch in ("gpt2", "llama"):
        trained_run(root / arch, {"train.model.arch": arch})
    return root


def table_row(stdout: str, name: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith(f"{name} "))
    return re.split(r"\s{2,}", line.strip())


def test_compare_of_a_gpt2_and_a_llama_run_prints_the_table_and_writes_the_plot(
    runs: Path,
) -> None:
    result = run_cli(runs, "compare", "gpt2", "llama")

    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header.split("  ")[0] == "run" and "best val loss" in header
    for name in ("gpt2", "llama"):
        row = table_row(result.stdout, name)
        assert row[2] == "1,024"  # tokens seen: 4 steps x 8 windows x 32 tokens
        assert re.fullmatch(r"\d\.\d{4} @4", row[5]), row  # best val loss at step 4
        assert row[7] == "n/a"  # no eval yet
    assert "all runs use the tokenizer char" in result.stdout
    assert re.search(r"^best: (gpt2|llama) \(lowest best val loss\)$", result.stdout, re.M)
    width, height = png_pixels(runs / PLOT_FILE)
    assert (width, height) == (1000, 500)
    table = (runs / TABLE_FILE).read_text(encoding="utf-8")
    assert "| gpt2 | " in table and "| llama | " in table
    assert f"![train and val loss over tokens seen]({PLOT_FILE})" in table


def test_runs_with_different_tokenizers_are_compared_on_bits_per_byte(
    runs: Path, tmp_path: Path
) -> None:
    from ml_playground.backends import GPTBackend  # noqa: PLC0415 - as above
    from ml_playground.sample.evaluate import evaluate_run  # noqa: PLC0415 - imports torch

    bpe = trained_run(tmp_path / "bpe", {"prepare.tokenizer": "tiktoken"})
    evaluate_run(bpe.config, GPTBackend(), None)
    char = runs / "gpt2"
    out = tmp_path / "report"

    result = run_cli(
        tmp_path, "compare", str(char / "out"), str(tmp_path / "bpe"), "--out", str(out)
    )

    assert result.returncode == 0, result.stderr
    assert "losses are not comparable: the runs use different tokenizers" in result.stdout
    assert "tiktoken gpt2" in result.stdout
    assert re.fullmatch(r"\d+\.\d{4}", table_row(result.stdout, "bpe")[7])
    assert f"no bits per byte for {char / 'out'}" in result.stdout
    assert "best: bpe (lowest bits per byte)" in result.stdout
    assert png_pixels(out / PLOT_FILE) == (1000, 500)
    assert "losses are not comparable" in (out / TABLE_FILE).read_text(encoding="utf-8")


def test_a_run_without_events_is_one_error_line_naming_it(runs: Path, tmp_path: Path) -> None:
    char_gpt(tmp_path / "untrained")

    line = assert_one_error_line(run_cli(tmp_path, "compare", str(runs / "gpt2"), "untrained"))

    assert "run untrained (" in line
    assert "holds no TensorBoard events" in line
    assert not (tmp_path / PLOT_FILE).exists()


def test_compare_of_one_run_is_one_error_line(runs: Path) -> None:
    line = assert_one_error_line(run_cli(runs, "compare", "gpt2"))

    assert "two or more runs" in line
