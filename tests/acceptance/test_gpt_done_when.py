"""Done-when scenarios of the foundation and from-scratch pipeline issues, as a user runs them.

Each scenario copies a shipped experiment folder into tmp_path (so nothing is written into
the source tree), shortens its preset to a handful of steps by editing the copy's
config.toml, and drives the real CLI in a subprocess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ml_playground import checkpoint, run_folder
from ml_playground.experiments import EXPERIMENTS_ROOT, list_experiments
from tests.cli_helpers import Cli
from tests.conftest import SHARED_DIR

SHORT_RUN = {"max_iters": 12, "eval_interval": 6, "eval_iters": 2, "log_interval": 6}
TINY_SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return Cli(cwd, env={"PYTHONUNBUFFERED": "1"}, timeout=600).run(*args)


def copy_experiment(name: str, tmp_path: Path, **overrides: int) -> Path:
    """A copy of a shipped experiment whose preset runs `overrides` instead of its own values."""
    folder = tmp_path / name
    shutil.copytree(
        EXPERIMENTS_ROOT / name,
        folder,
        ignore=shutil.ignore_patterns("datasets", "out", "export", "__pycache__"),
    )
    config = folder / "config.toml"
    text = config.read_text(encoding="utf-8")
    for key, value in overrides.items():
        text, count = re.subn(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
        assert count == 1, f"{key} must appear exactly once in the {name} preset"
    config.write_text(text, encoding="utf-8")
    return folder


def test_list_names_every_shipped_experiment(tmp_path: Path) -> None:
    result = run_cli("list", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    # Two lines per experiment: the name and description, then where it lives and its state.
    listed = {line.split()[0] for line in lines[::2]}
    assert listed == {experiment.name for experiment in list_experiments()}
    assert all(line.startswith(" ") for line in lines[1::2])
    assert {"shakespeare", "bundestag_char", "bundestag_tiktoken"} <= listed


def test_unknown_experiment_exits_2_naming_the_known_ones(tmp_path: Path) -> None:
    result = run_cli("train", "nosuch", cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown experiment 'nosuch'")
    assert "shakespeare" in lines[0]
    assert "bundestag_char" in lines[0]


def test_misspelled_key_exits_2_naming_file_key_and_suggestion(tmp_path: Path) -> None:
    folder = copy_experiment("bundestag_char", tmp_path)
    config = folder / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("learning_rate =", "learning_rat ="),
        encoding="utf-8",
    )

    result = run_cli("train", str(folder), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: unknown key train.optim.learning_rat in {config}; did you mean learning_rate?"
    )


def test_loop_bundestag_char_runs_out_of_the_box(tmp_path: Path) -> None:
    folder = copy_experiment("bundestag_char", tmp_path, **SHORT_RUN)

    result = run_cli("loop", str(folder), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "seeded the bundled sample" in result.stdout
    out_dir = folder / "out" / "bundestag_char"
    assert checkpoint.load(out_dir / run_folder.LAST_FILE).state.iter_num == SHORT_RUN["max_iters"]
    assert list((out_dir / "samples").glob("*.txt"))
    assert "Präsidentin:" in result.stdout  # the prompt starts the streamed sample


@pytest.mark.skipif(not TINY_SHAKESPEARE.is_file(), reason="needs ../shared/data")
def test_loop_shakespeare_works_offline_with_the_corpus_placed(tmp_path: Path) -> None:
    folder = copy_experiment("shakespeare", tmp_path, **SHORT_RUN)
    (folder / "datasets").mkdir()
    shutil.copyfile(TINY_SHAKESPEARE, folder / "datasets" / "input.txt")

    first = run_cli("loop", str(folder), cwd=tmp_path)
    second = run_cli("loop", str(folder), cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert "tiktoken gpt2" in first.stdout
    assert "ROMEO:" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout  # prepare skipped
    assert "resuming at step 12" in second.stdout
