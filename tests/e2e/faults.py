"""The real CLI in a process of its own with one fault installed: what no outside signal can
time exactly, or what this machine cannot produce for real.

    python tests/e2e/faults.py FAULT [ARG ...] -- CLI ARGUMENTS

installs FAULT, then runs `ml_playground.cli.main(CLI ARGUMENTS)` and exits with its code,
so the signal handler, the checkpoint writes and the error lines are the real ones. Faults:

  sigint-after-step K        after the K-th optimizer step of this process, a real SIGINT
                             to itself, as if Ctrl-C was pressed during that step
  kill-after-write NAME N    the process dies (exit 137, no cleanup, as under kill -9)
                             right after the N-th write of a file named NAME has landed
  kill-before-rename NAME    the process dies when a complete temporary copy of NAME is
                             about to be renamed into place, leaving it behind
  val-losses V1,V2,...       evaluations report these validation losses, in order
  refuse-open NAME ERRNO     the kernel refuses to create NAME (or its temporary sibling)
                             with ERRNO, as a read-only or unwritable folder does
  fail-fsync NAME ERRNO      flushing a temporary copy of NAME to disk fails with ERRNO and
                             no file name, as a full disk does on a delayed write

Only ml_playground and the standard library are imported: the script runs from any folder.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ml_playground import atomic, cli
from ml_playground.train import loop

EXIT_KILLED = 137  # what a shell reports for a process killed by SIGKILL


def is_temporary_copy(name: str, of: str) -> bool:
    """Whether `name` is one of atomic.py's temporary siblings of the file `of`."""
    return name.startswith(f".{of}.") and name.endswith(".tmp")


def sigint_after_step(steps: str) -> None:
    step = loop.optimizer_step
    done = 0

    def step_then_ctrl_c(run: loop.Run, lr: float) -> loop.StepResult:
        nonlocal done
        result = step(run, lr)
        done += 1
        if done == int(steps):
            os.kill(os.getpid(), signal.SIGINT)
        return result

    loop.optimizer_step = step_then_ctrl_c


def kill_after_write(name: str, count: str) -> None:
    write_bytes = atomic.write_bytes
    writes = 0

    def write_then_die(path: pathlib.Path, data: bytes) -> None:
        nonlocal writes
        write_bytes(path, data)
        if path.name == name:
            writes += 1
            if writes == int(count):
                os._exit(EXIT_KILLED)

    atomic.write_bytes = write_then_die


def kill_before_rename(name: str) -> None:
    replace = pathlib.Path.replace

    def die_before_renaming(self: pathlib.Path, target: str | os.PathLike[str]) -> pathlib.Path:
        if is_temporary_copy(self.name, name):
            os._exit(EXIT_KILLED)
        return replace(self, target)

    pathlib.Path.replace = die_before_renaming  # type: ignore[method-assign,assignment] # the fault itself


def val_losses(values: str) -> None:
    scripted = iter(float(value) for value in values.split(","))

    def estimate_loss(run: loop.Run) -> dict[str, float]:
        del run
        return {"train": 0.0, "val": next(scripted)}

    loop.estimate_loss = estimate_loss


def refuse_open(name: str, code: str) -> None:
    number = getattr(errno, code)
    real_open = os.open

    def open_or_refuse(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        base = pathlib.Path(os.fsdecode(path)).name
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and (base == name or is_temporary_copy(base, name)):
            raise OSError(number, os.strerror(number), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    os.open = open_or_refuse


def fail_fsync(name: str, code: str) -> None:
    number = getattr(errno, code)
    real_fsync = os.fsync

    def fsync_or_fail(fd: Any) -> None:
        descriptor = fd if isinstance(fd, int) else fd.fileno()
        target = pathlib.Path(f"/proc/self/fd/{descriptor}").readlink()
        if is_temporary_copy(target.name, name):
            raise OSError(number, os.strerror(number))
        real_fsync(fd)

    os.fsync = fsync_or_fail


FAULTS: dict[str, Callable[..., None]] = {
    "sigint-after-step": sigint_after_step,
    "kill-after-write": kill_after_write,
    "kill-before-rename": kill_before_rename,
    "val-losses": val_losses,
    "refuse-open": refuse_open,
    "fail-fsync": fail_fsync,
}


def main(argv: Sequence[str]) -> int:
    split = list(argv).index("--")
    fault, *arguments = argv[:split]
    FAULTS[fault](*arguments)
    return cli.main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
