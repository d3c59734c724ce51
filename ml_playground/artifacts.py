"""Typed JSON artifacts: one base model and one reader for every meta.json the project writes.

Each artifact (dataset meta, run meta, export stamp, model
arguments, tokenizer spec) is a frozen pydantic model that subclasses `Artifact`. Reading
goes through `read_artifact`, which turns a missing file, bad JSON or a failed validation
into the project's one-line error naming the file, the field and what to do; writing goes
through `write_artifact`, which is atomic. Nothing crosses a layer as a raw dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from ml_playground import atomic
from ml_playground.errors import UserError


class Artifact(BaseModel):
    """A JSON artifact: frozen, strict about types, closed to unknown keys.

    The first line of a subclass's docstring names it in error messages ("dataset metadata
    not found: ..."), so it is a short noun phrase that tests and users read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


A = TypeVar("A", bound=Artifact)


def parse_artifact(
    kind: type[A], obj: object, source: Path | str, *, error: type[UserError], remedy: str
) -> A:
    """Validate already-parsed JSON read from `source` (a file or a checkpoint section)."""
    if not isinstance(obj, dict):
        raise error(f"{source} is not a valid {_what(kind)}: not a JSON object; {remedy}")
    try:
        # JSON mode, so tuples arrive as lists and literals as strings, as they were written.
        return kind.model_validate_json(json.dumps(obj))
    except ValidationError as exc:
        problem = _first_problem(exc)
        raise error(f"{source} is not a valid {_what(kind)}: {problem}; {remedy}") from None


def read_artifact(kind: type[A], path: Path, *, error: type[UserError], remedy: str) -> A:
    """Read and validate `path`; a missing, unreadable or invalid file is one error line."""
    obj = read_json_object(path, what=_what(kind), error=error, remedy=remedy)
    return parse_artifact(kind, obj, path, error=error, remedy=remedy)


def read_json_object(
    path: Path, *, what: str, error: type[UserError], remedy: str
) -> dict[str, Any]:
    """The JSON object in `path`, for a reader that must look at it before validating."""
    text = read_user_file(path, what=what, error=error, remedy=remedy)
    try:
        obj: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}); {remedy}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} does not hold a JSON object; {remedy}")
    return cast(dict[str, Any], obj)


def read_user_file(path: Path, *, what: str, error: type[UserError], remedy: str) -> str:
    """The UTF-8 text of a file the user points at or a step wrote; one error line if not."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}; {remedy}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path} ({exc}); {remedy}") from None


def write_artifact(path: Path, artifact: Artifact) -> None:
    atomic.write_json(path, artifact.to_json())


def _what(kind: type[Artifact]) -> str:
    doc = (kind.__doc__ or kind.__name__).strip().splitlines()[0].rstrip(".")
    return doc[0].lower() + doc[1:] if doc else kind.__name__


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    problem = error["msg"].removeprefix("Value error, ")
    return f"'{where}' {problem.lower()}" if where else problem
