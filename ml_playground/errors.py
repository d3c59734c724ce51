"""The exception family the CLI understands.

Every error a user can cause is raised as a subclass of `UserError`, with a one-line
message that names the file, key or value involved and says what to do. The CLI prints
that line as `error: ...` and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from pathlib import Path


class SavedAndStopped(KeyboardInterrupt):
    """Ctrl-C stopped training after it saved `saved`; the CLI says so and exits 130."""

    def __init__(self, saved: Path) -> None:
        super().__init__(str(saved))
        self.saved = saved


class UserError(Exception):
    """A problem the user can fix: bad input, missing files, wrong settings."""

    exit_code = 2


class UsageError(UserError):
    """The command line itself is wrong: an unknown verb, a missing argument."""


class ConfigError(UserError):
    """A config file is unreadable, has an unknown key, or a value breaks a rule."""


class ExperimentNotFoundError(UserError):
    """The named experiment or preparer does not exist."""


class DataError(UserError):
    """Input data is missing, malformed, or does not match what a model expects."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or incompatible with the run."""


class ModelLoadError(UserError):
    """A pretrained model or tokenizer cannot be loaded (missing, gated, offline)."""


class ExportError(UserError):
    """Exporting a model failed or was refused."""


class ReportError(UserError):
    """A run report cannot be written: there is no run (TensorBoard events) to report on."""
