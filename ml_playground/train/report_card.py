"""The run report: out_dir/report.md and out_dir/loss.png, a run card to read after training.

Everything it states about the run comes from the TensorBoard events in out_dir/logs/tb
(see train/reporting.py for the tags), so `ml-playground report EXP` rebuilds the same
numbers at any time, and a resumed run's report covers all of its (re)starts. The config
is the experiment's effective config as loaded now, each key with the layer that set it;
the samples are the newest files in out_dir/samples.

A resumed run's events hold one elapsed-time series per (re)start: each starts again from
0, so the wall time is the sum of each start's last value. Steps that a crashed start
made after its last checkpoint were trained again; TensorBoard's reader drops their
out-of-order scalars, but their time was spent and counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ml_playground import atomic
from ml_playground.config_loader import LoadedConfig
from ml_playground.errors import ReportError, SavedAndStopped
from ml_playground.progress import format_duration
from ml_playground.run_folder import (
    PLOT_FILE,
    TB_DIR,
    plot_file,
    report_file,
    samples_dir,
    tensorboard_dir,
)
from ml_playground.train import reporting

SAMPLES_SHOWN = 3  # the newest; older ones stay in out_dir/samples
SAMPLE_CHARS = 2000
PLOT_INCHES, PLOT_DPI = (10.0, 4.0), 100  # a 1000 x 400 pixel PNG
TEXT_SUFFIX = "/text_summary"  # what TensorBoard appends to the tag of a text event

Point = tuple[int, float]


@dataclass(frozen=True)
class RunEvents:
    """The scalars and texts of out_dir/logs/tb, by tag, in step order."""

    scalars: Mapping[str, Sequence[Point]]
    texts: Mapping[str, Sequence[tuple[int, str]]]
    started: float
    """Wall-clock time of the first event (seconds since the epoch)."""
    ended: float

    def series(self, tag: str) -> Sequence[Point]:
        return self.scalars.get(tag, ())

    def last(self, tag: str) -> Point | None:
        values = self.series(tag)
        return values[-1] if values else None

    def last_text(self, tag: str) -> str | None:
        values = self.texts.get(tag, ())
        return values[-1][1] if values else None


@dataclass(frozen=True)
class RunFacts:
    """The numbers the report states, each derived from the events in one place."""

    steps: int
    max_iters: int | None
    tokens_seen: int | None
    wall_time_s: float
    tokens_per_sec: float | None
    best_val_loss: Point | None
    last_val_loss: Point | None
    last_train_loss: Point | None
    last_grad_norm: Point | None
    parameters: int | None
    trainable_parameters: int | None


def read_events(out_dir: Path) -> RunEvents:
    """Every scalar and text event of the run in out_dir; a one-line error if there is none."""
    log_dir = tensorboard_dir(out_dir)
    if not any(log_dir.glob("events.out.tfevents.*")):
        raise ReportError(
            f"no training run to report on: {log_dir} holds no TensorBoard events; train first "
            "(with train.runtime.tensorboard_enabled = true, the report is built from them)"
        )
    # Imported here: tensorboard's reader is slow to import and only the report needs it.
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    # tensorboard ships no type information; Any keeps the untyped surface to this function.
    # Size 0 keeps every event: the default keeps a sample of 10,000 scalars per tag.
    accumulator: Any = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars: dict[str, list[Point]] = {}
    wall_times: list[float] = []
    for tag in tags[event_accumulator.SCALARS]:
        events = accumulator.Scalars(tag)
        scalars[str(tag)] = [(int(event.step), float(event.value)) for event in events]
        wall_times += [float(event.wall_time) for event in events]
    texts: dict[str, list[tuple[int, str]]] = {}
    for tag in tags[event_accumulator.TENSORS]:
        if str(tag).endswith(TEXT_SUFFIX):
            texts[str(tag).removesuffix(TEXT_SUFFIX)] = [
                (int(event.step), _text_of(event.tensor_proto))
                for event in accumulator.Tensors(tag)
            ]
    if not scalars:
        raise ReportError(
            f"no training run to report on: the events in {log_dir} hold no scalars yet; "
            "train first"
        )
    return RunEvents(scalars, texts, min(wall_times), max(wall_times))


def _text_of(tensor_proto: Any) -> str:
    values: Sequence[bytes] = tensor_proto.string_val
    return "\n".join(value.decode("utf-8", errors="replace") for value in values)


def summarize(events: RunEvents) -> RunFacts:
    val = events.series(reporting.TAG_VAL_LOSS)
    speeds = [value for _, value in events.series(reporting.TAG_TOKENS_PER_SEC)]
    tokens = events.last(reporting.TAG_TOKENS_SEEN)
    return RunFacts(
        steps=max(step for series in events.scalars.values() for step, _ in series),
        max_iters=_int_of(events.last(reporting.TAG_MAX_ITERS)),
        tokens_seen=_int_of(tokens),
        wall_time_s=_wall_time(events.series(reporting.TAG_ELAPSED)),
        tokens_per_sec=sum(speeds) / len(speeds) if speeds else None,
        best_val_loss=min(val, key=lambda point: point[1]) if val else None,
        last_val_loss=val[-1] if val else None,
        last_train_loss=events.last(reporting.TAG_TRAIN_LOSS),
        last_grad_norm=events.last(reporting.TAG_GRAD_NORM),
        parameters=_int_of(events.last(reporting.TAG_PARAMETERS)),
        trainable_parameters=_int_of(events.last(reporting.TAG_TRAINABLE)),
    )


def _int_of(point: Point | None) -> int | None:
    return None if point is None else round(point[1])


def _wall_time(elapsed: Sequence[Point]) -> float:
    """The sum over (re)starts of each one's last elapsed time (each starts from 0)."""
    total, previous = 0.0, 0.0
    for _, value in elapsed:
        if value < previous:
            total += previous
        previous = value
    return total + previous


# --- writing -------------------------------------------------------------------------------


def write_report(loaded: LoadedConfig, name: str) -> Path:
    """out_dir/report.md and out_dir/loss.png from the run's events; returns the report."""
    out_dir = loaded.config.train.runtime.out_dir
    events = read_events(out_dir)
    with atomic.atomic_open(plot_file(out_dir), "wb") as handle:
        plot_curves(events, handle)
    text = render(name, summarize(events), events, loaded, newest_samples(out_dir))
    report = report_file(out_dir)
    atomic.write_text(report, text)
    return report


@contextlib.contextmanager
def reported(loaded: LoadedConfig, name: str) -> Generator[None]:
    """Write the report when training ends, or stops on Ctrl-C after saving its checkpoint."""
    try:
        yield
    except SavedAndStopped:
        report_after_training(loaded, name)
        raise
    report_after_training(loaded, name)


def report_after_training(loaded: LoadedConfig, name: str) -> None:
    """The report of the run that just trained, written by the main process only."""
    from ml_playground.distributed import ranks_from_env  # noqa: PLC0415 - imports torch

    if not ranks_from_env().is_main:
        return
    if not loaded.config.train.runtime.tensorboard_enabled:
        print(
            "report: not written, train.runtime.tensorboard_enabled = false "
            "(the report is built from the TensorBoard events)"
        )
        return
    report = write_report(loaded, name)
    print(f"report: {report} and {plot_file(report.parent)}")


def log_first_sample(loaded: LoadedConfig, text: str) -> None:
    """The first sample as a TensorBoard text event, at the last step the run recorded."""
    out_dir = loaded.config.sample.runtime.out_dir
    if not loaded.config.train.runtime.tensorboard_enabled:
        return
    try:
        step = summarize(read_events(out_dir)).steps
    except ReportError:
        step = 0  # sampled from weights trained without events: still worth keeping
    reporting.log_text(out_dir, reporting.TEXT_FIRST_SAMPLE, text, step)


def newest_samples(out_dir: Path) -> list[Path]:
    """The newest saved samples, oldest first (their names sort by the time they were saved)."""
    return sorted(samples_dir(out_dir).glob("*.txt"))[-SAMPLES_SHOWN:]


def render(
    name: str,
    facts: RunFacts,
    events: RunEvents,
    loaded: LoadedConfig,
    samples: Sequence[Path],
) -> str:
    """The report as markdown: summary table, curves, machine, samples, config."""
    lines = [
        f"# Run report: {name}",
        "",
        f"Trained {_date(events.started)} to {_date(events.ended)}; built from "
        f"`{TB_DIR}` by `ml-playground report` (run it again to rebuild this file).",
        "",
    ]
    description = events.last_text(reporting.TEXT_DESCRIPTION)
    if description:
        lines += [description, ""]
    lines += ["## Summary", "", "| | |", "| --- | --- |"]
    lines += [f"| {label} | {value} |" for label, value in _summary_rows(facts)]
    lines += ["", f"![loss and learning rate]({PLOT_FILE})", ""]
    machine = events.last_text(reporting.TEXT_MACHINE)
    if machine:
        lines += ["## Machine", "", machine, ""]
    if samples:
        lines += ["## Samples", ""]
        for path in samples:
            text = path.read_text(encoding="utf-8", errors="replace")
            if len(text) > SAMPLE_CHARS:
                text = text[:SAMPLE_CHARS] + " [...]"
            lines += [f"`{path.name}`", "", *_fenced(text), ""]
    config_path = loaded.config_path
    lines += ["## Config", "", f"The effective config of `{config_path}`, each key's origin:", ""]
    lines += [*_fenced("\n".join(loaded.describe())), ""]
    return "\n".join(lines)


def _summary_rows(facts: RunFacts) -> list[tuple[str, str]]:
    of_total = "" if facts.max_iters is None else f" of {facts.max_iters:,}"
    rows = [
        ("steps", f"{facts.steps:,}{of_total}"),
        ("tokens seen", _count(facts.tokens_seen)),
        ("wall time (training and evaluation)", format_duration(facts.wall_time_s)),
        (
            "throughput (evaluation excluded)",
            "n/a" if facts.tokens_per_sec is None else f"{facts.tokens_per_sec:,.0f} tokens/s",
        ),
        ("best val loss", _loss(facts.best_val_loss)),
        ("last val loss", _loss(facts.last_val_loss)),
        ("last train loss", _loss(facts.last_train_loss)),
        ("last gradient norm", _loss(facts.last_grad_norm)),
        ("parameters", _count(facts.parameters)),
    ]
    if facts.trainable_parameters != facts.parameters:
        rows.append(("trainable parameters", _count(facts.trainable_parameters)))
    return rows


def _loss(point: Point | None) -> str:
    return "n/a" if point is None else f"{point[1]:.4f} at step {point[0]:,}"


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fenced(text: str) -> list[str]:
    """A code block that no backtick run inside `text` can close early."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return [f"{fence}text", text.rstrip("\n"), fence]


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest


def plot_curves(events: RunEvents, handle: IO[bytes]) -> None:
    """Two panels as one PNG: train and val loss, and the learning rate, over steps."""
    # Imported here, and the Agg canvas named explicitly: no display, no pyplot state, and
    # the CLI does not pay for matplotlib unless it draws.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=PLOT_INCHES, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    losses, rates = figure.subplots(1, 2)
    for tag, label, style in (
        (reporting.TAG_TRAIN_LOSS, "train (logged)", "-"),
        (reporting.TAG_EVAL_TRAIN_LOSS, "train (eval)", "o--"),
        (reporting.TAG_VAL_LOSS, "val", "o-"),
    ):
        series = events.series(tag)
        if series:
            steps, values = zip(*series, strict=True)
            losses.plot(steps, values, style, label=label, markersize=3)
    losses.set(title="loss", xlabel="step", ylabel="cross-entropy")
    if losses.has_data():
        losses.legend()
    rate = events.series(reporting.TAG_LR)
    if rate:
        steps, values = zip(*rate, strict=True)
        rates.plot(steps, values)
    rates.set(title="learning rate", xlabel="step")
    figure.savefig(handle, format="png", dpi=PLOT_DPI)  # pyright: ignore[reportUnknownMemberType] - its **kwargs are untyped
