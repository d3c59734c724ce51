"""The from-scratch GPT pipeline from the command line: loop, Ctrl-C and resume, errors.

Each test copies a packaged experiment folder into tmp_path and runs
`python -m ml_playground.cli <verb> <folder> --exp-config <folder>/tiny.toml` with cwd in
tmp_path, so the real preparers, trainer and sampler run on a tiny model without touching
the source tree or the network (Tiny Shakespeare comes from the shared offline copy, the
bundestag experiments seed their bundled sample, tiktoken reads TIKTOKEN_CACHE_DIR).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground import atomic, checkpoint
from tests.cli_helpers import (
    assert_one_error_line,
    flip_a_tensor_byte,
    run_command,
    sha256_of_files,
    started_command,
)
from tests.gpt_helpers import TomlValue, copy_experiment, shakespeare_text, write_config

EXIT_INTERRUPTED = 130
TIMEOUT = 300  # seconds; generous, as a loaded CI machine imports torch slowly
OVERRIDE = "tiny.toml"

TINY_RUN: Mapping[str, TomlValue] = {
    "train.model.n_layer": 2,
    "train.model.n_head": 2,
    "train.model.n_embd": 32,
    "train.model.block_size": 32,
    "train.model.dropout": 0.0,
    "train.data.batch_size": 4,
    "train.schedule.warmup_iters": 2,
    "train.schedule.lr_decay_iters": 10,
    "train.schedule.min_lr": 1e-4,
    "train.runtime.max_iters": 10,
    "train.runtime.eval_interval": 5,
    "train.runtime.eval_iters": 2,
    "train.runtime.log_interval": 5,
    "train.runtime.device": "cpu",
    "train.runtime.tensorboard_enabled": False,
    "sample.sample.num_samples": 1,
    "sample.sample.max_new_tokens": 16,
}

EXPERIMENTS: Mapping[str, Mapping[str, TomlValue]] = {
    "shakespeare": {"prepare.tokenizer": "tiktoken", "sample.sample.start": "ROMEO:"},
    "bundestag_char": {"prepare.tokenizer": "char", "sample.sample.start": "Präsidentin:"},
    "bundestag_tiktoken": {"prepare.tokenizer": "tiktoken", "sample.sample.start": "Präsidentin:"},
}


@pytest.fixture(scope="session")
def bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the CLI subprocesses cache compiled bytecode, outside the source tree.

    Importing torch and torch._dynamo (every optimizer imports it) from source costs about
    15 s of CPU per process; with cached bytecode the later subprocesses take a third.
    Under xdist the workers share one cache in the session's common temp folder (Python
    writes each .pyc atomically, so concurrent writers are safe).
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    cache = shared / "pycache"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path.resolve()


class Cli:
    """Runs `python -m ml_playground.cli` in the working directory, offline."""

    def __init__(self, cwd: Path, bytecode_cache: Path) -> None:
        self.cwd = cwd
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)
        self.env["HF_HUB_OFFLINE"] = "1"

    def command(self, verb: str, folder: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ml_playground.cli",
            verb,
            str(folder),
            "--exp-config",
            str(folder / OVERRIDE),
        ]

    def run(self, verb: str, folder: Path) -> subprocess.CompletedProcess[str]:
        return run_command(self.command(verb, folder), cwd=self.cwd, env=self.env, timeout=TIMEOUT)

    def started(
        self, verb: str, folder: Path
    ) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
        """The command running in the background; killed on the way out if still running."""
        return started_command(self.command(verb, folder), cwd=self.cwd, env=self.env)


@pytest.fixture
def cli(workdir: Path, bytecode_cache: Path) -> Cli:
    return Cli(workdir, bytecode_cache)


def experiment(workdir: Path, name: str, changes: Mapping[str, TomlValue] | None = None) -> Path:
    """A copy of the packaged experiment with a tiny override config in its folder."""
    folder = copy_experiment(name, workdir)
    write_config(folder / OVERRIDE, {**TINY_RUN, **EXPERIMENTS[name], **(changes or {})})
    return folder


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_loop_prepares_trains_and_prints_samples(workdir: Path, cli: Cli, name: str) -> None:
    folder = experiment(workdir, name)
    if name == "shakespeare":
        corpus = folder / "datasets" / "input.txt"
        corpus.parent.mkdir()
        corpus.write_text(shakespeare_text(50_000), encoding="utf-8")

    result = cli.run("loop", folder)

    assert result.returncode == 0, result.stderr
    out_dir = folder / "out"
    assert f"prepared {folder / 'datasets'}" in result.stdout
    assert "fresh start" in result.stdout
    assert "done: step 10, best val loss" in result.stdout
    assert "--- sample 1/1 ---" in result.stdout
    assert str(EXPERIMENTS[name]["sample.sample.start"]) in result.stdout
    assert checkpoint.load(out_dir / checkpoint.LAST_FILE).state.iter_num == 10
    assert (out_dir / checkpoint.BEST_FILE).is_file()
    (saved,) = (out_dir / "samples").glob("*.txt")
    assert saved.read_text(encoding="utf-8") in result.stdout
    # Readable by a TensorBoard or Ollama service running as another user, as the umask says.
    umask = atomic.current_umask()
    for path in (out_dir / checkpoint.LAST_FILE, out_dir / "meta.json", saved):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    for path in (folder / "datasets" / "train.bin", folder / "datasets" / "meta.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_shakespeare_offline_without_a_corpus_says_where_to_place_it(
    workdir: Path, cli: Cli
) -> None:
    # Port 9 (discard) is closed on a test machine: the download fails without the network.
    folder = experiment(workdir, "shakespeare", {"prepare.download_url": "http://127.0.0.1:9/x"})

    line = assert_one_error_line(cli.run("loop", folder))

    assert "download of http://127.0.0.1:9/x failed" in line
    assert f"place it at {folder / 'datasets' / 'input.txt'}" in line
    assert not (folder / "out").exists()


def test_sample_without_a_checkpoint_exits_2_naming_out_dir(workdir: Path, cli: Cli) -> None:
    folder = experiment(workdir, "bundestag_char")

    line = assert_one_error_line(cli.run("sample", folder))

    assert f"no checkpoint in {folder / 'out'}" in line


def test_a_token_id_outside_the_vocabulary_exits_2_naming_the_file(workdir: Path, cli: Cli) -> None:
    folder = experiment(workdir, "bundestag_char")
    assert cli.run("prepare", folder).returncode == 0
    train_bin = folder / "datasets" / "train.bin"
    ids = np.fromfile(train_bin, dtype=np.uint16)
    ids[len(ids) // 2] = 60_000  # the size stays right; one id points past the vocabulary
    ids.tofile(train_bin)

    line = assert_one_error_line(cli.run("train", folder))

    assert f"{train_bin} holds token id 60000, outside the vocabulary of" in line
    assert not (folder / "out" / checkpoint.LAST_FILE).exists()


def test_a_flipped_bit_in_a_checkpoint_stops_train_and_sample_and_changes_nothing(
    workdir: Path, cli: Cli
) -> None:
    folder = experiment(workdir, "bundestag_char")
    assert cli.run("loop", folder).returncode == 0
    out_dir = folder / "out"
    for name in (checkpoint.LAST_FILE, checkpoint.BEST_FILE):
        flip_a_tensor_byte(out_dir / name)
    before = sha256_of_files(out_dir)

    for verb, name in (("train", checkpoint.LAST_FILE), ("sample", checkpoint.BEST_FILE)):
        line = assert_one_error_line(cli.run(verb, folder))
        assert f"checkpoint {out_dir / name} fails its integrity check" in line, verb
    assert sha256_of_files(out_dir) == before


def endless_run(workdir: Path, cli: Cli) -> tuple[Path, Path]:
    """A prepared bundestag_char experiment that trains until stopped; and its ckpt_last."""
    folder = experiment(workdir, "bundestag_char", {"train.runtime.max_iters": 100_000})
    assert cli.run("prepare", folder).returncode == 0
    return folder, folder / "out" / checkpoint.LAST_FILE


def wait_for(last: Path, process: subprocess.Popen[str]) -> None:
    """Until the running training wrote its first checkpoint."""
    deadline = time.monotonic() + TIMEOUT
    while not last.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "training never wrote its first checkpoint"
        time.sleep(0.05)


def test_a_second_train_on_a_busy_out_dir_exits_2_naming_the_running_one(
    workdir: Path, cli: Cli
) -> None:
    folder, last = endless_run(workdir, cli)
    with cli.started("train", folder) as first:
        wait_for(last, first)

        line = assert_one_error_line(cli.run("train", folder))

        first.send_signal(signal.SIGINT)
        first.communicate(timeout=TIMEOUT)
    assert f"is in use by another training run (pid {first.pid}" in line
    assert first.returncode == EXIT_INTERRUPTED
    assert not (folder / "out" / checkpoint.LOCK_FILE).exists()


def test_one_ctrl_c_delivered_twice_to_the_process_group_still_saves(
    workdir: Path, cli: Cli
) -> None:
    # A terminal or `uv run` can hand one key press to the process twice in a row.
    folder, last = endless_run(workdir, cli)
    with cli.started("train", folder) as process:
        wait_for(last, process)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    stopped_at = checkpoint.load(last).state.iter_num
    assert f"interrupted at step {stopped_at}; saved {last}" in stdout
    assert stderr.splitlines()[-1] == f"interrupted; saved {last}, run the same command to resume"


def test_a_checkpoint_whose_weights_do_not_fit_exits_2_and_stays(workdir: Path, cli: Cli) -> None:
    folder = experiment(workdir, "bundestag_char")
    assert cli.run("loop", folder).returncode == 0
    best = folder / "out" / checkpoint.BEST_FILE
    payload = torch.load(best, weights_only=True)
    del payload[checkpoint.DIGEST_KEY]  # as written by a version without the digest
    del payload["model"]["lm_head.weight"]
    torch.save(payload, best)
    before = best.read_bytes()

    line = assert_one_error_line(cli.run("sample", folder))

    assert f"checkpoint {best} holds weights that do not fit its model_args" in line
    assert best.read_bytes() == before


def test_ctrl_c_saves_a_checkpoint_that_the_next_loop_resumes(workdir: Path, cli: Cli) -> None:
    folder, last = endless_run(workdir, cli)
    with cli.started("train", folder) as process:
        wait_for(last, process)

        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    stopped_at = checkpoint.load(last).state.iter_num
    assert stopped_at > 0
    assert f"interrupted at step {stopped_at}; saved {last}" in stdout

    write_config(
        folder / OVERRIDE,
        {**TINY_RUN, **EXPERIMENTS["bundestag_char"], "train.runtime.max_iters": stopped_at + 3},
    )
    result = cli.run("loop", folder)

    assert result.returncode == 0, result.stderr
    assert f"dataset up to date: {folder / 'datasets'}" in result.stdout
    assert f"resuming at step {stopped_at}" in result.stdout
    assert f"done: step {stopped_at + 3}" in result.stdout
    assert "--- sample 1/1 ---" in result.stdout
    assert checkpoint.load(last).state.iter_num == stopped_at + 3
