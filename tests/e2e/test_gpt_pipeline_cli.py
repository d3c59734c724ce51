"""The from-scratch GPT pipeline from the command line: loop, Ctrl-C and resume, errors.

Each test copies a packaged experiment folder into tmp_path and runs
`python -m ml_playground.cli <verb> <folder> --exp-config <folder>/tiny.toml` with cwd in
tmp_path, so the real preparers, trainer and sampler run on a tiny model without touching
the source tree or the network (a slice of Tiny Shakespeare is placed from the shared
offline copy, the bundestag experiments seed their bundled sample, GPT-2's BPE ranks ship
with the package).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Generator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground import atomic, checkpoint, run_folder
from ml_playground.digest import content_digest
from ml_playground.train import reporting
from tests.cli_helpers import (
    EXIT_KILLED,
    Cli,
    assert_one_error_line,
    flip_a_tensor_byte,
    mounted_tmpfs,
    png_pixels,
    report_rows,
    same_tensors,
    scalar_events,
    sha256_of_files,
)
from tests.experiments import copy_experiment, shakespeare_text
from tests.toml_helpers import TomlValue, write_toml

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


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path.resolve()


def tiny(verb: str, folder: Path) -> tuple[str, ...]:
    """`VERB FOLDER --exp-config FOLDER/tiny.toml`: a step of the experiment's tiny run."""
    return (verb, str(folder), "--exp-config", str(folder / OVERRIDE))


@pytest.fixture
def cli(workdir: Path, bytecode_cache: Path) -> Cli:
    return Cli(workdir, bytecode_cache=bytecode_cache, timeout=TIMEOUT)


def experiment(workdir: Path, name: str, changes: Mapping[str, TomlValue] | None = None) -> Path:
    """A copy of the packaged experiment with a tiny override config in its folder."""
    folder = copy_experiment(name, workdir)
    write_toml(folder / OVERRIDE, {**TINY_RUN, **EXPERIMENTS[name], **(changes or {})})
    return folder


def reconfigure(folder: Path, changes: Mapping[str, TomlValue]) -> None:
    """Rewrite the bundestag_char experiment's tiny override as the tiny run plus `changes`."""
    write_toml(folder / OVERRIDE, {**TINY_RUN, **EXPERIMENTS["bundestag_char"], **changes})


def prepared_run(workdir: Path, cli: Cli, changes: Mapping[str, TomlValue]) -> Path:
    """A bundestag_char experiment with `changes`, its dataset prepared, not yet trained."""
    folder = experiment(workdir, "bundestag_char", changes)
    assert cli.run(*tiny("prepare", folder)).returncode == 0
    return folder


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_loop_prepares_trains_and_prints_samples(workdir: Path, cli: Cli, name: str) -> None:
    folder = experiment(workdir, name)
    if name == "shakespeare":
        corpus = folder / "datasets" / "input.txt"
        corpus.parent.mkdir()
        corpus.write_text(shakespeare_text(50_000), encoding="utf-8")

    result = cli.run(*tiny("loop", folder))

    assert result.returncode == 0, result.stderr
    out_dir = folder / "out"
    assert f"prepared {folder / 'datasets'}" in result.stdout
    assert "fresh start" in result.stdout
    assert "done: step 10, best val loss" in result.stdout
    assert "--- sample 1/1 ---" in result.stderr
    assert str(EXPERIMENTS[name]["sample.sample.start"]) in result.stdout
    assert checkpoint.load(out_dir / run_folder.LAST_FILE).state.iter_num == 10
    assert (out_dir / run_folder.BEST_FILE).is_file()
    (saved,) = (out_dir / "samples").glob("*.txt")
    assert saved.read_text(encoding="utf-8") in result.stdout
    # Readable by a TensorBoard or Ollama service running as another user, as the umask says.
    umask = atomic.current_umask()
    for path in (out_dir / run_folder.LAST_FILE, out_dir / "meta.json", saved):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    for path in (folder / "datasets" / "train.bin", folder / "datasets" / "meta.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_shakespeare_offline_without_a_corpus_says_where_to_place_it(
    workdir: Path, cli: Cli
) -> None:
    # Port 9 (discard) is closed on a test machine: the download fails without the network.
    folder = experiment(workdir, "shakespeare", {"prepare.download_url": "http://127.0.0.1:9/x"})

    line = assert_one_error_line(cli.run(*tiny("loop", folder)))

    assert "download of http://127.0.0.1:9/x failed" in line
    assert f"place it at {folder / 'datasets' / 'input.txt'}" in line
    assert not (folder / "out").exists()


def test_sample_without_a_checkpoint_exits_2_naming_out_dir(workdir: Path, cli: Cli) -> None:
    folder = experiment(workdir, "bundestag_char")

    line = assert_one_error_line(cli.run(*tiny("sample", folder)))

    assert f"no checkpoint in {folder / 'out'}" in line


def test_a_token_id_outside_the_vocabulary_exits_2_naming_the_file(workdir: Path, cli: Cli) -> None:
    folder = experiment(workdir, "bundestag_char")
    assert cli.run(*tiny("prepare", folder)).returncode == 0
    train_bin = folder / "datasets" / "train.bin"
    ids = np.fromfile(train_bin, dtype=np.uint16)
    ids[len(ids) // 2] = 60_000  # the size stays right; one id points past the vocabulary
    ids.tofile(train_bin)

    line = assert_one_error_line(cli.run(*tiny("train", folder)))

    assert f"{train_bin} holds token id 60000, outside the vocabulary of" in line
    assert not (folder / "out" / run_folder.LAST_FILE).exists()


def test_a_flipped_bit_in_a_checkpoint_stops_train_and_sample_and_changes_nothing(
    workdir: Path, cli: Cli
) -> None:
    folder = experiment(workdir, "bundestag_char")
    assert cli.run(*tiny("loop", folder)).returncode == 0
    out_dir = folder / "out"
    for name in (run_folder.LAST_FILE, run_folder.BEST_FILE):
        flip_a_tensor_byte(out_dir / name)
    before = sha256_of_files(out_dir)

    for verb, name in (("train", run_folder.LAST_FILE), ("sample", run_folder.BEST_FILE)):
        line = assert_one_error_line(cli.run(*tiny(verb, folder)))
        assert f"checkpoint {out_dir / name} fails its integrity check" in line, verb
    assert sha256_of_files(out_dir) == before


def test_a_run_folder_of_the_older_meta_format_is_refused_by_train_sample_eval_and_export(
    workdir: Path, cli: Cli
) -> None:
    # Before run meta had a `kind`, a GPT run's out_dir/meta.json was a copy of the dataset's.
    folder = prepared_run(workdir, cli, {"export.ollama.enabled": True})
    assert cli.run(*tiny("train", folder)).returncode == 0
    out_dir = folder / "out"
    shutil.copyfile(folder / "datasets" / "meta.json", run_folder.meta_file(out_dir))
    before = sha256_of_files(folder)

    again = f"ml-playground train --fresh {' '.join(tiny('', folder)[1:])}"
    for verb in ("train", "sample", "eval", "export"):
        line = assert_one_error_line(cli.run(*tiny(verb, folder)))
        assert f"{run_folder.meta_file(out_dir)} is a run meta.json of another format" in line
        assert again in line, verb
    assert sha256_of_files(folder) == before


def endless_run(workdir: Path, cli: Cli) -> tuple[Path, Path]:
    """A prepared bundestag_char experiment that trains until stopped; and its ckpt_last."""
    folder = prepared_run(workdir, cli, {"train.runtime.max_iters": 100_000})
    return folder, folder / "out" / run_folder.LAST_FILE


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
    with cli.started(*tiny("train", folder)) as first:
        wait_for(last, first)

        line = assert_one_error_line(cli.run(*tiny("train", folder)))

        first.send_signal(signal.SIGINT)
        first.communicate(timeout=TIMEOUT)
    assert f"is in use by another training run (pid {first.pid}" in line
    assert first.returncode == EXIT_INTERRUPTED
    assert not (folder / "out" / run_folder.LOCK_FILE).exists()


def test_one_ctrl_c_delivered_twice_to_the_process_group_still_saves(
    workdir: Path, cli: Cli
) -> None:
    # A terminal or `uv run` can hand one key press to the process twice in a row.
    folder, last = endless_run(workdir, cli)
    with cli.started(*tiny("train", folder)) as process:
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
    assert cli.run(*tiny("loop", folder)).returncode == 0
    best = folder / "out" / run_folder.BEST_FILE
    payload = torch.load(best, weights_only=True)
    del payload[checkpoint.DIGEST_KEY]
    del payload["model"]["lm_head.weight"]
    # Sealed again, so the digest vouches for the damage and the weights check meets it.
    torch.save({**payload, checkpoint.DIGEST_KEY: content_digest(payload)}, best)
    before = best.read_bytes()

    line = assert_one_error_line(cli.run(*tiny("sample", folder)))

    assert f"checkpoint {best} holds weights that do not fit its model_args" in line
    assert best.read_bytes() == before


def test_ctrl_c_saves_a_checkpoint_that_the_next_loop_resumes(workdir: Path, cli: Cli) -> None:
    folder, last = endless_run(workdir, cli)
    with cli.started(*tiny("train", folder)) as process:
        wait_for(last, process)

        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    stopped_at = checkpoint.load(last).state.iter_num
    assert stopped_at > 0
    assert f"interrupted at step {stopped_at}; saved {last}" in stdout

    write_toml(
        folder / OVERRIDE,
        {**TINY_RUN, **EXPERIMENTS["bundestag_char"], "train.runtime.max_iters": stopped_at + 3},
    )
    result = cli.run(*tiny("loop", folder))

    assert result.returncode == 0, result.stderr
    assert f"dataset up to date: {folder / 'datasets'}" in result.stdout
    assert f"resuming at step {stopped_at}" in result.stdout
    assert f"done: step {stopped_at + 3}" in result.stdout
    assert "--- sample 1/1 ---" in result.stderr
    assert checkpoint.load(last).state.iter_num == stopped_at + 3


# --- faults a test cannot time from outside: tests/e2e/faults.py installs them ------------------


def train_uninterrupted(folder: Path, cli: Cli, changes: Mapping[str, TomlValue]) -> Path:
    """The same run trained without a fault into folder/straight; returns that out_dir."""
    override = folder / OVERRIDE
    kept = override.read_text(encoding="utf-8")
    reconfigure(folder, {**changes, "train.runtime.out_dir": "straight"})
    result = cli.run(*tiny("train", folder))
    override.write_text(kept, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    return folder / "straight"


def assert_same_checkpoints(expected: Path, actual: Path) -> None:
    """Both out_dirs hold the same last and best: step, best loss, weights, optimizer, RNG."""
    for name in (run_folder.LAST_FILE, run_folder.BEST_FILE):
        a, b = checkpoint.load(expected / name), checkpoint.load(actual / name)
        assert a.state.iter_num == b.state.iter_num, name
        assert a.state.best_val_loss == b.state.best_val_loss, name
        assert same_tensors(a.model, b.model), name
        assert same_tensors(a.state.optimizer, b.state.optimizer), name
        assert same_tensors(a.state.rng, b.state.rng), name


def evaluations(out_dir: Path) -> dict[str, list[tuple[int, float]]]:
    scalars = scalar_events(out_dir / run_folder.TB_DIR)
    return {tag: scalars[tag] for tag in (reporting.TAG_VAL_LOSS, reporting.TAG_EVAL_TRAIN_LOSS)}


# Dropout draws from the RNG the checkpoint restores; both runs must agree on every
# evaluation (TensorBoard), on which step is best and on what last and best hold.
DROPOUT_RUN: Mapping[str, TomlValue] = {
    "train.model.dropout": 0.1,
    "train.runtime.max_iters": 12,
    "train.runtime.eval_interval": 4,
    "train.runtime.tensorboard_enabled": True,
}


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory: pytest.TempPathFactory, bytecode_cache: Path) -> Path:
    """The dropout run prepared and trained once without a fault into folder/straight; tests
    copy the folder (shutil.copytree) and never change this one."""
    workdir = tmp_path_factory.mktemp("dropout_run").resolve()
    cli = Cli(workdir, bytecode_cache=bytecode_cache, timeout=TIMEOUT)
    folder = prepared_run(workdir, cli, DROPOUT_RUN)
    train_uninterrupted(folder, cli, DROPOUT_RUN)
    return folder


# One worker runs both cases, so --dist loadgroup trains the shared dropout_run once.
@pytest.mark.xdist_group("dropout_run")
@pytest.mark.parametrize("stop_at", [4, 5], ids=["at-an-eval-boundary", "between-evals"])
def test_a_run_stopped_by_ctrl_c_and_resumed_equals_the_uninterrupted_run(
    workdir: Path, cli: Cli, dropout_run: Path, stop_at: int
) -> None:
    folder = workdir / dropout_run.name
    shutil.copytree(dropout_run, folder)
    dataset = sha256_of_files(folder / "datasets")
    out_dir = folder / "out"
    last = out_dir / run_folder.LAST_FILE

    stopped = cli.run(*tiny("train", folder), fault=("sigint-after-step", str(stop_at)))

    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.splitlines()[-1] == (
        f"interrupted; saved {last}, run the same command to resume"
    )
    assert f"interrupted at step {stop_at}; saved {last}" in stopped.stdout
    assert checkpoint.load(last).state.iter_num == stop_at
    resumed = cli.run(*tiny("train", folder))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stop_at}" in resumed.stdout
    straight = folder / "straight"
    assert_same_checkpoints(straight, out_dir)
    expected, actual = evaluations(straight), evaluations(out_dir)
    assert [step for step, _ in actual[reporting.TAG_VAL_LOSS]] == [4, 8, 12]
    assert actual == expected
    assert sha256_of_files(folder / "datasets") == dataset


def test_a_kill_between_the_best_and_last_writes_leaves_a_pair_that_resume_repairs(
    workdir: Path, cli: Cli
) -> None:
    changes: dict[str, TomlValue] = {
        "train.runtime.max_iters": 8,
        "train.runtime.eval_interval": 4,
    }
    folder = prepared_run(workdir, cli, changes)
    out_dir = folder / "out"

    # Best is written at steps 4 and 8; the process dies right after the second.
    killed = cli.run(*tiny("train", folder), fault=("kill-after-write", run_folder.BEST_FILE, "2"))

    assert killed.returncode == EXIT_KILLED, killed.stderr
    best, last = (
        checkpoint.load(out_dir / name) for name in (run_folder.BEST_FILE, run_folder.LAST_FILE)
    )
    assert (best.state.iter_num, last.state.iter_num) == (8, 4)
    assert last.state.best_val_loss > best.state.best_val_loss
    resumed = cli.run(*tiny("train", folder))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 4" in resumed.stdout
    assert_same_checkpoints(train_uninterrupted(folder, cli, changes), out_dir)


def test_a_kill_during_a_save_keeps_the_old_checkpoint_and_the_next_run_removes_the_leftover(
    workdir: Path, cli: Cli
) -> None:
    folder = prepared_run(workdir, cli, {"train.runtime.max_iters": 2})
    assert cli.run(*tiny("train", folder)).returncode == 0
    out_dir = folder / "out"
    before = sha256_of_files(out_dir)
    reconfigure(folder, {"train.runtime.max_iters": 4})

    # The new ckpt_last.pt is complete in its temporary file when the process dies.
    killed = cli.run(*tiny("train", folder), fault=("kill-before-rename", run_folder.LAST_FILE))

    assert killed.returncode == EXIT_KILLED, killed.stderr
    assert len(list(out_dir.glob(f".{run_folder.LAST_FILE}.*.tmp"))) == 1
    after = sha256_of_files(out_dir)
    assert after[run_folder.LAST_FILE] == before[run_folder.LAST_FILE]
    resumed = cli.run(*tiny("train", folder))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 2" in resumed.stdout
    assert not [path for path in out_dir.iterdir() if path.name.startswith(".")]
    assert checkpoint.load(out_dir / run_folder.LAST_FILE).state.iter_num == 4


@pytest.mark.parametrize(
    ("always_save", "best_step"), [(False, 8), (True, 12)], ids=["lowest", "always-save"]
)
def test_best_holds_the_step_with_the_lowest_val_loss_unless_always_save_is_on(
    workdir: Path, cli: Cli, always_save: bool, best_step: int
) -> None:
    folder = prepared_run(
        workdir,
        cli,
        {
            "train.runtime.max_iters": 12,
            "train.runtime.eval_interval": 4,
            "train.runtime.always_save_checkpoint": always_save,
        },
    )

    # Validation falls, then rises: 3.0 at step 4, 1.0 at 8, 2.0 at 12.
    result = cli.run(*tiny("train", folder), fault=("val-losses", "3.0,1.0,2.0"))

    assert result.returncode == 0, result.stderr
    assert "done: step 12, best val loss 1.0000" in result.stdout
    out_dir = folder / "out"
    best = checkpoint.load(out_dir / run_folder.BEST_FILE)
    last = checkpoint.load(out_dir / run_folder.LAST_FILE)
    assert best.state.iter_num == best_step
    assert last.state.iter_num == 12
    assert last.state.best_val_loss == best.state.best_val_loss == 1.0


# --- file-system errors: one line, exit 2, the files there before intact ----------------------


@pytest.fixture
def small_disk(workdir: Path) -> Generator[Path]:
    """A 2 MiB tmpfs mounted in workdir; skipped where this process may not mount one."""
    with mounted_tmpfs(workdir / "disk", "2m") as disk:
        yield disk


def trained_into(workdir: Path, cli: Cli, out_dir: Path) -> Path:
    """A bundestag_char run trained to step 4 (evaluations at 2 and 4) into `out_dir`;
    its config then asks for 8 steps. Returns the experiment folder."""
    changes: dict[str, TomlValue] = {
        "train.runtime.max_iters": 4,
        "train.runtime.eval_interval": 2,
        "train.runtime.out_dir": str(out_dir),
    }
    folder = prepared_run(workdir, cli, changes)
    assert cli.run(*tiny("train", folder)).returncode == 0
    reconfigure(folder, {**changes, "train.runtime.max_iters": 8})
    return folder


@pytest.mark.parametrize("how", ["a real full tmpfs", "an injected ENOSPC"])
def test_a_full_disk_during_a_checkpoint_save_is_one_error_line_and_the_checkpoints_stay(
    workdir: Path, cli: Cli, request: pytest.FixtureRequest, how: str
) -> None:
    # A full disk fails the write (or its fsync) with no file name; the line names the file.
    real = how == "a real full tmpfs"
    out_dir = (request.getfixturevalue("small_disk") if real else workdir) / "out"
    folder = trained_into(workdir, cli, out_dir)
    before = sha256_of_files(out_dir)
    fault: tuple[str, ...] = ()
    if real:
        free = os.statvfs(out_dir)
        (out_dir.parent / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - 64 * 1024))
    else:
        fault = ("fail-fsync", run_folder.BEST_FILE, "ENOSPC")

    line = assert_one_error_line(cli.run(*tiny("train", folder), fault=fault))

    assert line.startswith(
        f"error: No space left on device: {out_dir / run_folder.BEST_FILE}; the disk is full"
    )
    assert sha256_of_files(out_dir) == before


@pytest.mark.parametrize(
    "how",
    [
        "a real read-only mount",
        "an injected EROFS",
        "a real unwritable folder",
        "an injected EACCES",
    ],
)
def test_a_read_only_or_unwritable_out_dir_is_one_error_line_and_the_checkpoints_stay(
    workdir: Path, cli: Cli, request: pytest.FixtureRequest, how: str
) -> None:
    read_only = "EROFS" in how or "read-only" in how
    disk = request.getfixturevalue("small_disk") if how == "a real read-only mount" else workdir
    out_dir = disk / "out"
    folder = trained_into(workdir, cli, out_dir)
    before = sha256_of_files(out_dir)
    code = errno.EROFS if read_only else errno.EACCES
    fault: tuple[str, ...] = ()
    prefix: list[str] = []
    if how == "a real read-only mount":
        remounted = subprocess.run(
            ["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True, check=False
        )
        assert remounted.returncode == 0, remounted.stderr
    elif how == "a real unwritable folder":
        prefix = without_root_file_access()
        out_dir.chmod(0o555)
    else:
        fault = ("refuse-open", run_folder.BEST_FILE, errno.errorcode[code])

    line = assert_one_error_line(cli.run(*tiny("train", folder), fault=fault, prefix=prefix))

    assert line.startswith(f"error: {os.strerror(code)}: {out_dir}{os.sep}")
    assert ("read-only" if read_only else "make the folder writable") in line
    assert sha256_of_files(out_dir) == before


def without_root_file_access() -> list[str]:
    """A command prefix under which root, too, is bound by file permissions: setpriv drops
    the capabilities that let root write anywhere. Nothing for other users; skips where
    root cannot drop them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores file permissions and setpriv is missing to drop that")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("where", ["dataset_dir", "out_dir"])
def test_a_file_where_a_folder_should_be_is_one_error_line(
    workdir: Path, cli: Cli, where: str
) -> None:
    blocker = workdir / "blocker"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    key = "prepare.dataset_dir" if where == "dataset_dir" else "train.runtime.out_dir"
    folder = experiment(workdir, "bundestag_char", {key: str(blocker / where)})

    line = assert_one_error_line(cli.run(*tiny("loop", folder)))

    assert str(blocker) in line
    assert blocker.read_text(encoding="utf-8") == "a file, not a folder"


# --- where a run is and what it did: log lines and the run report -------------------------------

REPORTED: Mapping[str, TomlValue] = {
    "train.runtime.tensorboard_enabled": True,
    "train.runtime.log_interval": 2,
}
TOKENS_PER_STEP = 4 * 32  # TINY_RUN: batch_size x block_size, no accumulation
# A log line in a file or pipe (no progress bar there) says where the run is and how long.
LOG_LINE = re.compile(
    r"^step +(?P<step>\d+)/(?P<total>\d+) \| loss [\d.]+ \| .* tok/s \| "
    r"elapsed \d+(m\d\ds|s) \| eta \d+(m\d\ds|s)$"
)


def test_train_logs_step_of_total_with_elapsed_and_eta_and_reports_the_events_numbers(
    workdir: Path, cli: Cli
) -> None:
    folder = prepared_run(workdir, cli, REPORTED)
    out_dir = folder / "out"

    result = cli.run(*tiny("train", folder))

    assert result.returncode == 0, result.stderr
    logged = [LOG_LINE.match(line) for line in result.stdout.splitlines() if "tok/s" in line]
    assert all(logged), result.stdout
    assert [(int(m["step"]), int(m["total"])) for m in logged if m] == [
        (step, 10) for step in (2, 4, 6, 8, 10)
    ]
    report = out_dir / run_folder.REPORT_FILE
    assert f"report: {report} and {out_dir / run_folder.PLOT_FILE}" in result.stdout
    assert png_pixels(out_dir / run_folder.PLOT_FILE) == (1000, 400)
    rows = report_rows(report)
    scalars = scalar_events(out_dir / run_folder.TB_DIR)
    val = scalars[reporting.TAG_VAL_LOSS]
    best, last = min(val, key=lambda point: point[1]), val[-1]
    assert rows["best val loss"] == f"{best[1]:.4f} at step {best[0]}"
    assert rows["last val loss"] == f"{last[1]:.4f} at step {last[0]}"
    steps, tokens = scalars[reporting.TAG_TOKENS_SEEN][-1]
    assert (steps, tokens) == (10, 10 * TOKENS_PER_STEP)
    assert rows["steps"] == f"{steps} of 10"
    assert rows["tokens seen"] == f"{int(tokens):,}"
    assert int(rows["parameters"].replace(",", "")) == scalars[reporting.TAG_PARAMETERS][-1][1]
    assert [step for step, _ in scalars[reporting.TAG_GRAD_NORM]] == [2, 4, 6, 8, 10]

    # The report is the events' whole story: rebuilt from them alone, it says the same.
    first = report.read_text(encoding="utf-8")
    report.unlink()
    (out_dir / run_folder.PLOT_FILE).unlink()
    rebuilt = cli.run(*tiny("report", folder))

    assert rebuilt.returncode == 0, rebuilt.stderr
    assert report.read_text(encoding="utf-8") == first
    assert png_pixels(out_dir / run_folder.PLOT_FILE) == (1000, 400)


def test_ctrl_c_writes_the_report_of_the_steps_done_after_saving_the_checkpoint(
    workdir: Path, cli: Cli
) -> None:
    folder = prepared_run(workdir, cli, REPORTED)
    out_dir = folder / "out"
    last = out_dir / run_folder.LAST_FILE

    stopped = cli.run(*tiny("train", folder), fault=("sigint-after-step", "3"))

    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == (
        f"interrupted; saved {last}, run the same command to resume"
    )
    assert checkpoint.load(last).state.iter_num == 3
    rows = report_rows(out_dir / run_folder.REPORT_FILE)
    assert rows["steps"] == "3 of 10"
    assert rows["tokens seen"] == f"{3 * TOKENS_PER_STEP:,}"
    assert png_pixels(out_dir / run_folder.PLOT_FILE) == (1000, 400)


def test_report_before_any_run_exits_2_naming_the_missing_events(workdir: Path, cli: Cli) -> None:
    folder = experiment(workdir, "bundestag_char")

    line = assert_one_error_line(cli.run(*tiny("report", folder)))

    assert f"{folder / 'out' / run_folder.TB_DIR} holds no TensorBoard events" in line
    assert not (folder / "out" / run_folder.REPORT_FILE).exists()
