"""What `eval` writes and shows: the result artifact of out_dir/eval/ and its table.

`sample/evaluate.py` scores a model and fills in an `EvalResult`; `compare` and the
Hugging Face export read it back from val.json without loading a model.
"""

from __future__ import annotations

from typing import Literal

from ml_playground.artifacts import Artifact


class EvaluatedText(Artifact):
    """What eval scored."""

    source: Literal["val split", "text file"]
    path: str
    sha256: str
    tokens: int  # ids read, including a start token put in front of a file
    targets: int  # ids predicted and scored
    bytes: int  # UTF-8 bytes of the text the scored targets decode to
    counted: str  # which targets count, in words


class Score(Artifact):
    """One model's numbers."""

    model: str
    weights: str | None
    targets: int
    nll_nats: float
    loss: float
    perplexity: float
    bits_per_byte: float


class Difference(Artifact):
    """Fine-tuned minus base: negative means fine-tuning helped."""

    loss: float
    perplexity: float
    bits_per_byte: float


class EvalResult(Artifact):
    """Eval result."""

    evaluated: EvaluatedText
    window: int
    windows: int
    method: str
    device: str
    dtype: str
    scores: tuple[Score, ...]
    difference: Difference | None = None


# --- the table -----------------------------------------------------------------------------

COLUMNS = ("model", "tokens", "loss (nats/token)", "perplexity", "bits/byte")


def table(result: EvalResult) -> list[str]:
    """What stdout shows: what was scored, then one row per model and the difference."""
    evaluated = result.evaluated
    rows = [
        (
            score.model,
            f"{score.targets:,}",
            *_numbers(score.loss, score.perplexity, score.bits_per_byte),
        )
        for score in result.scores
    ]
    if result.difference is not None:
        diff = result.difference
        rows.append(
            ("fine-tuned - base", "", *_numbers(diff.loss, diff.perplexity, diff.bits_per_byte))
        )
    widths = [max(len(row[i]) for row in (COLUMNS, *rows)) for i in range(len(COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    return [
        f"{evaluated.source} {evaluated.path}: {evaluated.targets:,} targets "
        f"({evaluated.counted}), {evaluated.bytes:,} bytes; {result.windows:,} window(s) of "
        f"{result.window} tokens; {result.dtype} on {result.device}",
        line(COLUMNS),
        *(line(row) for row in rows),
    ]


def _numbers(loss: float, perplexity: float, bits_per_byte: float) -> tuple[str, str, str]:
    return f"{loss:.4f}", f"{perplexity:.4f}", f"{bits_per_byte:.4f}"
