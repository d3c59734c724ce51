"""Starting over without losing anything, and hints that name the experiment as typed.

Real tiny runs of a copy of bundestag_char through `python -m ml_playground.cli`: the
experiment lives in ./experiments/ of the working directory (so it is found by name, as a
user's own experiments are) and its config.toml is the tiny run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.cli_helpers import Cli, assert_one_error_line
from tests.e2e.test_gpt_pipeline_cli import EXPERIMENTS, TIMEOUT, TINY_RUN
from tests.experiments import copy_experiment
from tests.toml_helpers import write_toml

NAME = "bundestag_char"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path.resolve()


@pytest.fixture
def mine(workdir: Path) -> Path:
    """bundestag_char copied into ./experiments/ with the tiny run as its config.toml (and
    the experiment's source: a config.toml says how its experiment is prepared)."""
    folder = copy_experiment(NAME, workdir / "experiments")
    source = {"prepare.source": "text", "prepare.fallback_text": "sample_corpus.txt"}
    write_toml(folder / "config.toml", {**TINY_RUN, **EXPERIMENTS[NAME], **source})
    return folder


@pytest.fixture
def cli(workdir: Path, bytecode_cache: Path) -> Cli:
    return Cli(workdir, bytecode_cache=bytecode_cache, timeout=TIMEOUT)


def run(cli: Cli, *args: str) -> tuple[int, str, str]:
    result = cli.run(*args)
    return result.returncode, result.stdout, result.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_fresh_moves_the_previous_run_aside_and_starts_at_step_zero(
    workdir: Path, mine: Path, cli: Cli
) -> None:
    assert run(cli, "prepare", NAME)[0] == 0
    assert run(cli, "train", NAME)[0] == 0
    out = mine / "out"
    before = {path.name: digest(path) for path in out.glob("*.pt")}

    code, stdout, stderr = run(cli, "train", NAME, "--fresh")
    again = run(cli, "train", NAME, "--fresh")

    assert code == 0, stderr
    assert f"--fresh: moved the previous run to {mine / 'out.1'}" in stderr
    assert {path.name: digest(path) for path in (mine / "out.1").glob("*.pt")} == before
    assert "resum" not in stdout.lower(), "the new run starts from scratch"
    assert (out / "ckpt_last.pt").is_file()
    assert again[0] == 0 and (mine / "out.2" / "ckpt_last.pt").is_file()
    assert "prepared, trained" in run(cli, "list")[1]


def test_prepare_force_prepares_again_with_unchanged_inputs(
    workdir: Path, mine: Path, cli: Cli
) -> None:
    assert run(cli, "prepare", NAME)[0] == 0
    meta = mine / "datasets" / "meta.json"
    first = meta.stat().st_mtime_ns

    skipped = run(cli, "prepare", NAME)
    forced = run(cli, "prepare", NAME, "--force")

    assert "dataset up to date" in skipped[1]
    assert forced[0] == 0, forced[2]
    assert "dataset up to date" not in forced[1]
    assert meta.stat().st_mtime_ns != first


def test_a_hint_names_the_experiment_and_exp_config_as_the_user_typed_them(
    workdir: Path, mine: Path, cli: Cli
) -> None:
    variant = workdir / "variant.toml"
    shutil.copy(mine / "config.toml", variant)

    result = cli.run("sample", NAME, "--exp-config", "variant.toml")

    line = assert_one_error_line(result)
    assert f"`ml-playground train {NAME} --exp-config variant.toml`" in line
    assert "<experiment>" not in line


def test_train_fresh_leaves_a_run_in_progress_where_it_is(
    workdir: Path, mine: Path, cli: Cli
) -> None:
    out = mine / "out"
    out.mkdir()
    # The lock a live run holds: its PID, here this test's own live process.
    (out / ".lock").write_text(f"{os.getpid()}\n", encoding="utf-8")

    result = cli.run("train", NAME, "--fresh")

    line = assert_one_error_line(result)
    assert f"--fresh: {out} is in use by a training run (pid {os.getpid()})" in line
    assert sorted(path.name for path in mine.iterdir() if path.name.startswith("out")) == ["out"]


def test_train_whose_log_reader_has_gone_trains_to_the_end_and_saves(
    workdir: Path, mine: Path, cli: Cli
) -> None:
    assert run(cli, "prepare", NAME)[0] == 0
    result = cli.run_with_reader_gone("train", NAME)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    last = run(cli, "train", NAME)
    assert f"resuming at step {TINY_RUN['train.runtime.max_iters']}" in last[1], last
