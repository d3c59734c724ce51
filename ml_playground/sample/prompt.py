"""Prompts and where samples go, shared by the GPT and the fine-tuned-model samplers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ml_playground import atomic
from ml_playground.config import FILE_PROMPT_PREFIX
from ml_playground.errors import DataError

SAMPLES_DIR = "samples"


def read_prompt(start: str) -> str:
    """The prompt text: `start` itself, or the contents of the file named by `FILE:path`."""
    if not start.startswith(FILE_PROMPT_PREFIX):
        return start
    path = Path(start[len(FILE_PROMPT_PREFIX) :])
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(
            f"prompt file {path} (sample.sample.start) does not exist; create it or fix the path"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompt file {path}: {exc}") from None


def sample_path(out_dir: Path, index: int, suffix: str = ".txt") -> Path:
    """out_dir/samples/sample-<UTC time>-<index>.txt; sortable, never overwrites a run."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return out_dir / SAMPLES_DIR / f"sample-{stamp}-{index:02d}{suffix}"


def save_sample(out_dir: Path, index: int, text: str) -> Path:
    path = sample_path(out_dir, index)
    atomic.write_text(path, text)
    return path
