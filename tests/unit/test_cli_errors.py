"""What the CLI makes of a file-system problem a user can fix: one line, exit 2."""

from __future__ import annotations

import errno
import os
from argparse import Namespace
from pathlib import Path

import pytest

from ml_playground import cli
from ml_playground.config_loader import LoadedConfig
from ml_playground.experiments import Experiment
from tests.experiments import char_gpt


@pytest.mark.parametrize(
    ("code", "remedy"),
    [
        (errno.ENOSPC, "the disk is full; free some space"),
        (errno.EROFS, "read-only; point the config at a writable folder"),
        (errno.EACCES, "make the folder writable"),
        (errno.ENOTDIR, "is a file, not a folder"),
        (errno.EEXIST, "a file stands where a folder should be"),
    ],
)
def test_a_file_system_problem_is_one_error_line_naming_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: int,
    remedy: str,
) -> None:
    char_gpt(tmp_path)
    target = tmp_path / "out" / "ckpt_last.pt"

    def failing_train(experiment: Experiment, loaded: LoadedConfig, args: Namespace) -> None:
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setitem(cli.STEPS, "train", (failing_train, "train"))
    exit_code = cli.main(["train", str(tmp_path)])

    lines = capsys.readouterr().err.splitlines()
    assert exit_code == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {os.strerror(code)}: {target}; ")
    assert remedy in lines[0]


def test_an_os_error_nobody_can_fix_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    char_gpt(tmp_path)

    def failing_train(experiment: Experiment, loaded: LoadedConfig, args: Namespace) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setitem(cli.STEPS, "train", (failing_train, "train"))
    with pytest.raises(OSError, match="Input/output error"):
        cli.main(["train", str(tmp_path)])
