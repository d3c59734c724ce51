"""Running the real CLI in a subprocess, as a user does; shared by the e2e tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import struct
import subprocess
import sys
import zipfile
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, cast

import pytest
import torch

EXIT_USER_ERROR = 2
EXIT_KILLED = 137  # what a shell reports for a process killed by SIGKILL
FAULTS_SCRIPT = Path(__file__).parent / "e2e" / "faults.py"


def cli_entry(fault: Sequence[str] = (), module: str = "ml_playground.cli") -> list[str]:
    """What follows the Python executable to run the CLI: `-m ml_playground.cli` (or `-m` of
    another module that runs it), or tests/e2e/faults.py with one fault installed (see
    there) in front of the same CLI."""
    if not fault:
        return ["-m", module]
    return [str(FAULTS_SCRIPT), *fault, "--"]


@dataclass(frozen=True)
class Cli:
    """The real CLI in a subprocess, as a user runs it: the one way tests drive it.

    `python -m ml_playground.cli ARGS` in `cwd`, in this process's environment less pytest's
    variables, offline (HF_HUB_OFFLINE=1), with `env` on top (None removes a variable).
    Bytecode goes to `bytecode_cache` (the session fixture of tests/conftest.py), never next
    to the package sources; without one none is written. `launcher` runs the module: this
    Python, or a launcher such as torchrun that takes `-m MODULE ARGS`. Exit codes are the
    caller's to check.
    """

    cwd: Path
    env: Mapping[str, str | None] = field(default_factory=dict[str, str | None])
    bytecode_cache: Path | None = None
    timeout: float = 300
    launcher: Sequence[str] = (sys.executable,)

    def with_env(self, **changes: str | None) -> Cli:
        """The same CLI with more environment changes."""
        return replace(self, env={**self.env, **changes})

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
        env["HF_HUB_OFFLINE"] = "1"
        if self.bytecode_cache is None:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.bytecode_cache)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def command(
        self, *args: str | Path, fault: Sequence[str] = (), module: str = "ml_playground.cli"
    ) -> list[str]:
        """The command line; with `fault` installed (tests/e2e/faults.py), or with `module`
        (one that runs the CLI) in place of ml_playground.cli."""
        return [*self.launcher, *cli_entry(fault, module), *map(str, args)]

    def run(
        self,
        *args: str | Path,
        fault: Sequence[str] = (),
        module: str = "ml_playground.cli",
        prefix: Sequence[str] = (),
        input: str | None = None,
        stdout: IO[str] | int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion reading `input`, stderr captured and stdout too unless `stdout`
        is given; behind `prefix` (a program that runs the rest as its command) if given."""
        return self.run_program(
            [*prefix, *self.command(*args, fault=fault, module=module)], input=input, stdout=stdout
        )

    def run_program(
        self,
        command: Sequence[str],
        *,
        input: str | None = None,
        stdout: IO[str] | int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`command` (one that runs the CLI, such as a shell pipeline) in the CLI's folder and
        environment, under its timeout."""
        return subprocess.run(
            list(command),
            cwd=self.cwd,
            env=self.environment(),
            input=input,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=self.timeout,
            check=False,
        )

    def run_with_reader_gone(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """Run with stdout a pipe whose reader has gone before the first byte (every write
        breaks it, as after `| head`); stderr is captured."""
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            return self.run(*args, stdout=write_end)
        finally:
            os.close(write_end)

    def run_piped_into(
        self, shell_command: str, *args: str | Path
    ) -> subprocess.CompletedProcess[str]:
        """`CLI ARGS | shell_command` in bash with pipefail, as a user types it."""
        line = f"set -o pipefail; {shlex.join(self.command(*args))} | {shell_command}"
        return self.run_program(["bash", "-c", line])

    @contextlib.contextmanager
    def started(
        self, *args: str | Path, fault: Sequence[str] = (), stdin: int | None = None
    ) -> Generator[subprocess.Popen[str]]:
        """The command running in the background, stdout and stderr pipes (and stdin where
        `stdin` is subprocess.PIPE); killed on the way out if still running."""
        process = subprocess.Popen(
            self.command(*args, fault=fault),
            cwd=self.cwd,
            env=self.environment(),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()

    @contextlib.contextmanager
    def started_on_terminal(
        self, terminal: int, *args: str | Path
    ) -> Generator[subprocess.Popen[bytes]]:
        """The command running in the background with `terminal` (a pty's replica end) as
        its stdin, stdout and stderr; killed on the way out if still running."""
        process = subprocess.Popen(
            self.command(*args),
            cwd=self.cwd,
            env=self.environment(),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def run_cli(cwd: Path, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`ml-playground ARGS` in `cwd` with the defaults of Cli, run to completion."""
    return Cli(cwd, timeout=timeout).run(*args)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Generator[Path]:
    """A tmpfs of `size` (mount's syntax, e.g. "8m") at `folder`, for full-disk tests;
    pytest.skip where this process may not mount one."""
    folder.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True, check=False)


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2, and stderr is exactly one `error: ...` line without a traceback."""
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def assert_refused_as_another_format(message: str, named: Path) -> None:
    """A file of another format's refusal: one line naming the file and `train --fresh`."""
    assert "ml-playground train --fresh <experiment>" in message
    assert "\n" not in message
    assert str(named) in message


def flip_a_tensor_byte(path: Path) -> None:
    """Invert one byte in the middle of the largest tensor of a torch or safetensors file.

    The file stays loadable (torch's zip reader checks no CRCs, safetensors has none), so
    only an integrity check can tell.
    """
    data = bytearray(path.read_bytes())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            entry = max(archive.infolist(), key=lambda info: info.file_size)
        # The local header is 30 bytes plus the name and extra field it states itself.
        name_length, extra_length = struct.unpack_from("<HH", data, entry.header_offset + 26)
        start = entry.header_offset + 30 + name_length + extra_length
        offset = start + entry.file_size // 2
    else:  # safetensors: an 8-byte header length, the JSON header, then the tensors
        (header_length,) = struct.unpack_from("<Q", data, 0)
        offset = (8 + header_length + len(data)) // 2
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def sha256_of_files(folder: Path) -> dict[str, str]:
    """Every file below `folder` by relative path, with its SHA-256."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint payload, keyed by its path in the tree."""
    found: dict[str, torch.Tensor] = {}
    if isinstance(tree, torch.Tensor):
        found[prefix] = tree
    elif isinstance(tree, Mapping):
        for key, value in cast(Mapping[object, object], tree).items():
            found.update(tensors(value, f"{prefix}/{key}"))
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(cast(Sequence[object], tree)):
            found.update(tensors(value, f"{prefix}/{index}"))
    return found


def same_tensors(a: object, b: object) -> bool:
    """Whether two nested payloads hold the same tensors at the same places, bit for bit."""
    left, right = tensors(a), tensors(b)
    return left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left)


def scalar_events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard recorded under log_dir, by tag, as (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import (  # noqa: PLC0415 - slow import
        EventAccumulator,
    )

    # tensorboard ships no type information; Any keeps the untyped surface to this function.
    accumulator: Any = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        str(tag): [(int(event.step), float(event.value)) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report_rows(report: Path) -> dict[str, str]:
    """The summary table of a run report (out_dir/report.md), label -> value."""
    rows: dict[str, str] = {}
    for line in report.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0] and cells[0] != "---":
            rows[cells[0]] = cells[1]
    return rows


def png_pixels(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, read back by matplotlib's PNG decoder."""
    from matplotlib import image  # noqa: PLC0415 - slow import, only report tests need it

    assert path.read_bytes()[: len(PNG_SIGNATURE)] == PNG_SIGNATURE
    height, width = image.imread(path).shape[:2]
    return int(width), int(height)


# A Gloo job whose ranks all finished, saved and destroyed their process group can still
# abort one rank at interpreter exit ("terminate called without an active exception",
# torch 2.15, about one launch in twenty on a loaded 2-core machine; pytorch/pytorch#179291
# describes the mechanism). The run's files are complete, but the launcher reports a
# failure. Tests that launch ranks retry once on exactly that message, and only on it.
GLOO_TEARDOWN_ABORT = pytest.mark.flaky(
    reruns=1, only_rerun=["terminate called without an active exception"]
)
