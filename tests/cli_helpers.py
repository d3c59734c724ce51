"""Running the real CLI in a subprocess, as a user does; shared by the e2e tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path

EXIT_USER_ERROR = 2


def run_command(
    command: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run to completion, capturing text output; the exit code is the caller's to check."""
    return subprocess.run(
        list(command),
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def started_command(
    command: Sequence[str], *, cwd: Path, env: Mapping[str, str]
) -> Generator[subprocess.Popen[str]]:
    """The command running in the background; killed on the way out if still running."""
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env),
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


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2, and stderr is exactly one `error: ...` line without a traceback."""
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]
