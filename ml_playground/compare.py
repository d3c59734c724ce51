"""The `compare` verb: several runs side by side, as a table, compare.md and compare.png.

Each run is an experiment (a name or a folder with a config.toml: its out_dir is read) or
an out_dir itself. Everything comes from what the runs left behind, as for `report`
(train/report_card.py): the TensorBoard events give parameters, tokens seen, wall time,
throughput and the losses; out_dir/eval/val.json, where `eval` has run, gives bits per
byte; out_dir/meta.json says which tokenizer the run trained with.

A loss is a mean over tokens, so two runs with different tokenizers have losses over
different units: the table then says the losses are not comparable and ranks the runs by
bits per byte, which counts the bytes of the same text whatever the tokenizer.

The plot draws each run in one colour over tokens seen (the x axis runs are comparable
on, whatever their batch size): its logged train loss as a line and its val loss as
dots on a dashed line, one legend entry for each, named after the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ml_playground import atomic, run_folder
from ml_playground.artifacts import read_artifact
from ml_playground.config_loader import load_config
from ml_playground.errors import ReportError
from ml_playground.experiments import CONFIG_FILE, find_experiment
from ml_playground.progress import format_duration
from ml_playground.run_folder import EVAL_DIR, TB_DIR, VAL_RESULT
from ml_playground.sample.eval_result import EvalResult
from ml_playground.train import reporting
from ml_playground.train.report_card import RunEvents, RunFacts, read_events, summarize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_FILE = "compare.png"
TABLE_FILE = "compare.md"
PLOT_INCHES, PLOT_DPI = (10.0, 5.0), 100
HEADERS = (
    "run",
    "parameters (trainable)",
    "tokens seen",
    "wall time",
    "tokens/s",
    "best val loss",
    "last val loss",
    "bits/byte",
)


@dataclass(frozen=True)
class ComparedRun:
    """One run as `compare` reads it."""

    name: str
    out_dir: Path
    tokenizer: str | None  # None: the run's meta.json is missing or says nothing of it
    facts: RunFacts
    events: RunEvents
    bits_per_byte: float | None


@dataclass(frozen=True)
class Comparison:
    runs: tuple[ComparedRun, ...]

    @property
    def losses_comparable(self) -> bool:
        tokenizers = {run.tokenizer for run in self.runs}
        return len(tokenizers) == 1 and None not in tokenizers

    def best(self) -> tuple[ComparedRun, str] | None:
        """The best run and by what: lowest val loss where losses compare, else bits/byte."""
        if self.losses_comparable:
            scored = [
                (run.facts.best_val_loss[1], run) for run in self.runs if run.facts.best_val_loss
            ]
            measure = "lowest best val loss"
        else:
            scored = [
                (run.bits_per_byte, run) for run in self.runs if run.bits_per_byte is not None
            ]
            measure = "lowest bits per byte"
        if not scored:
            return None
        return min(scored, key=lambda pair: pair[0])[1], measure


def read_runs(arguments: Sequence[str]) -> Comparison:
    """The runs named on the command line; a run without events is one line naming it."""
    located = [locate(argument) for argument in arguments]
    names = [name for name, _ in located]
    if len(set(names)) < len(names):
        names = list(arguments)  # two experiments' out_dirs of one name: say them as given
    runs: list[ComparedRun] = []
    for name, (_, out_dir) in zip(names, located, strict=True):
        try:
            events = read_events(out_dir)
        except ReportError as exc:
            raise ReportError(f"run {name} ({out_dir}) cannot be compared: {exc}") from None
        runs.append(
            ComparedRun(
                name=name,
                out_dir=out_dir,
                tokenizer=run_tokenizer(out_dir),
                facts=summarize(events),
                events=events,
                bits_per_byte=bits_per_byte(out_dir),
            )
        )
    return Comparison(tuple(runs))


def locate(argument: str) -> tuple[str, Path]:
    """(name, out_dir) of an experiment or of an out_dir given by its path."""
    path = Path(argument).expanduser()
    if path.is_dir() and not (path / CONFIG_FILE).is_file():
        return argument, path.resolve()
    experiment = find_experiment(argument)
    loaded = load_config(experiment.config_path, experiment.directory)
    return experiment.name, loaded.config.train.runtime.out_dir


def run_tokenizer(out_dir: Path) -> str | None:
    """Which tokenizer the run trained with, from its meta.json: a GPT's tokenizer spec or a
    fine-tuning run's base model; None when the run has no meta.json."""
    meta = run_folder.read_run_meta(out_dir)
    return None if meta is None else meta.describe_tokenizer()


def bits_per_byte(out_dir: Path) -> float | None:
    """The trained (or fine-tuned) model's bits per byte on the val split, if `eval` ran."""
    path = run_folder.eval_result(out_dir)
    if not path.is_file():
        return None
    remedy = "run `ml-playground eval` on that run again"
    result = read_artifact(EvalResult, path, error=ReportError, remedy=remedy)
    return result.scores[0].bits_per_byte


# --- the table --------------------------------------------------------------------------------


def rows(comparison: Comparison) -> list[tuple[str, ...]]:
    return [_row(run) for run in comparison.runs]


def _row(run: ComparedRun) -> tuple[str, ...]:
    facts = run.facts
    parameters = _count(facts.parameters)
    if facts.trainable_parameters is not None and facts.trainable_parameters != facts.parameters:
        parameters += f" ({facts.trainable_parameters:,})"
    return (
        run.name,
        parameters,
        _count(facts.tokens_seen),
        format_duration(facts.wall_time_s),
        "n/a" if facts.tokens_per_sec is None else f"{facts.tokens_per_sec:,.0f}",
        _loss(facts.best_val_loss),
        _loss(facts.last_val_loss),
        "n/a" if run.bits_per_byte is None else f"{run.bits_per_byte:.4f}",
    )


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _loss(point: tuple[int, float] | None) -> str:
    return "n/a" if point is None else f"{point[1]:.4f} @{point[0]:,}"


def notes(comparison: Comparison) -> list[str]:
    """What the table means: whether losses compare, and which run is best by what."""
    lines: list[str] = []
    if not comparison.losses_comparable:
        tokenizers = "; ".join(
            f"{run.name}: {run.tokenizer or 'unknown (no meta.json)'}" for run in comparison.runs
        )
        lines.append(
            "losses are not comparable: the runs use different tokenizers "
            f"({tokenizers}); compare them on bits per byte"
        )
        missing = [run.name for run in comparison.runs if run.bits_per_byte is None]
        if missing:
            lines.append(
                f"no bits per byte for {', '.join(missing)}: run `ml-playground eval` on each"
            )
    else:
        lines.append(f"all runs use the tokenizer {comparison.runs[0].tokenizer}")
    best = comparison.best()
    if best is not None:
        lines.append(f"best: {best[0].name} ({best[1]})")
    return lines


def text_table(comparison: Comparison) -> list[str]:
    table = [HEADERS, *rows(comparison)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def markdown(comparison: Comparison) -> str:
    lines = [
        "# Run comparison",
        "",
        "Built by `ml-playground compare` from each run's TensorBoard events "
        f"(`{TB_DIR}`) and, where `eval` ran, `{EVAL_DIR}/{VAL_RESULT}`.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "| " + " | ".join("---" for _ in HEADERS) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(comparison)]
    lines += ["", *notes(comparison), ""]
    lines += ["| run | out_dir |", "| --- | --- |"]
    lines += [f"| {run.name} | `{run.out_dir}` |" for run in comparison.runs]
    lines += ["", f"![train and val loss over tokens seen]({PLOT_FILE})", ""]
    return "\n".join(lines)


# --- the plot -------------------------------------------------------------------------------


def figure(comparison: Comparison) -> Figure:
    """Train and val loss of every run over tokens seen, one colour per run."""
    # The Agg canvas named explicitly: no display, no pyplot state (as report_card does).
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - slow import
    from matplotlib.figure import Figure  # noqa: PLC0415 - as above

    drawn = Figure(figsize=PLOT_INCHES, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(drawn)
    axes = drawn.subplots()
    by_tokens = all(run.events.series(reporting.TAG_TOKENS_SEEN) for run in comparison.runs)
    for index, run in enumerate(comparison.runs):
        colour = f"C{index % 10}"
        for tag, label, style in (
            (reporting.TAG_TRAIN_LOSS, f"{run.name} (train)", "-"),
            (reporting.TAG_VAL_LOSS, f"{run.name} (val)", "o--"),
        ):
            series = run.events.series(tag)
            if not series:
                continue
            steps, values = zip(*series, strict=True)
            xs = _tokens_at(run.events, steps) if by_tokens else [float(s) for s in steps]
            axes.plot(xs, values, style, color=colour, label=label, markersize=3)  # pyright: ignore[reportUnknownMemberType] - its **kwargs are untyped
    title = (
        "loss" if comparison.losses_comparable else "loss (different tokenizers: not comparable)"
    )
    axes.set(title=title, xlabel="tokens seen" if by_tokens else "step", ylabel="cross-entropy")
    if axes.has_data():
        axes.legend()  # pyright: ignore[reportUnknownMemberType] - its **kwargs are untyped
    return drawn


def _tokens_at(events: RunEvents, steps: Sequence[int]) -> list[float]:
    """Tokens seen at each step, between the steps the events recorded it at."""
    import numpy as np  # noqa: PLC0415 - only the plot needs it

    seen = events.series(reporting.TAG_TOKENS_SEEN)
    known_steps = [0.0, *(float(step) for step, _ in seen)]
    known_tokens = [0.0, *(value for _, value in seen)]
    return [float(x) for x in np.interp(np.asarray(steps, dtype=float), known_steps, known_tokens)]


def legend_labels(drawn: Figure) -> list[str]:
    """The texts of the plot's legend, in order."""
    return [
        text.get_text()
        for axes in drawn.axes
        if (found := axes.get_legend()) is not None
        for text in found.get_texts()
    ]


def write_plot(comparison: Comparison, handle: IO[bytes]) -> Figure:
    drawn = figure(comparison)
    drawn.savefig(handle, format="png", dpi=PLOT_DPI)  # pyright: ignore[reportUnknownMemberType] - its **kwargs are untyped
    return drawn


# --- the verb ---------------------------------------------------------------------------------


def compare(arguments: Sequence[str], out: Path) -> tuple[Path, Path]:
    """Print the table, write out/compare.md and out/compare.png; returns both paths."""
    comparison = read_runs(arguments)
    for line in [*text_table(comparison), "", *notes(comparison)]:
        print(line)
    out.mkdir(parents=True, exist_ok=True)
    plot, table = out / PLOT_FILE, out / TABLE_FILE
    with atomic.atomic_open(plot, "wb") as handle:
        write_plot(comparison, handle)
    atomic.write_text(table, markdown(comparison))
    return table, plot
