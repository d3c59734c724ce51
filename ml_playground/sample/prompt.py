"""Prompts and where samples go: the same for every model backend.

The prompt is `sample.sample.start` or the file a `FILE:path` start names. When the run
says its records open with a fixed text (e.g. "<SPEECH_START>\\n"), a prompt that does not
already begin with it gets it, so generation starts the way every training record did;
the saved and printed text leaves it out and begins with the user's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ml_playground import atomic
from ml_playground.config import FILE_PROMPT_PREFIX
from ml_playground.errors import DataError
from ml_playground.run_folder import samples_dir
from ml_playground.sample.backend import LoadedModel


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    hidden: str  # the decoded record opening: read by the model, not shown to the user


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


def encode_prompt(model: LoadedModel, prompt: str) -> Prompt:
    """The ids generation starts from: the record opening unless present, then `prompt`."""
    opening = model.record_opening
    added = opening if opening and not prompt.startswith(opening) else ""
    ids = model.encode(added + prompt) if added or prompt else []
    if not ids:
        if model.first_id is None:
            raise DataError(
                "sample.sample.start is empty and the tokenizer has no begin- or end-of-text "
                "token to start from; give a prompt such as a newline"
            )
        ids = [model.first_id]
    hidden = model.decode(model.encode(added)) if added else ""
    return Prompt(ids=ids, hidden=hidden)


def sample_path(out_dir: Path, index: int, suffix: str = ".txt") -> Path:
    """out_dir/samples/sample-<UTC time>-<index>.txt; sortable, never overwrites a run."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return samples_dir(out_dir) / f"sample-{stamp}-{index:02d}{suffix}"


def save_sample(out_dir: Path, index: int, text: str) -> Path:
    path = sample_path(out_dir, index)
    atomic.write_text(path, text)
    return path
