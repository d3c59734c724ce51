"""Time to quality: how fast each model and optimizer reaches a validation loss.

Tokens per second say how fast a step is; what a user waits for is a good model. This
trains nanoGPT's CPU recipe for character-level Tiny Shakespeare (4 layers, 4 heads,
128 wide, block 64, batch 12, 2000 steps, learning rate 1e-3 with 100 warmup steps and a
cosine to 1e-4, evaluated every 250 steps over 20 batches; nanoGPT reports val 1.88) once
per setting: each architecture with each optimizer, in float32 and in the precision
`dtype = "auto"` picks here.

The runs step in alternation, one step each per round, so a burst of load on the shared
machine slows all of them alike. Each run's clock counts only its own optimizer steps:
evaluation is the same work for every setting and is left out. "Time to target" is that
clock at the first evaluation whose validation loss is at or below the target, so it is
as coarse as eval_interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.training import TokenFile, never_saved
from ml_playground.config import Arch, DTypeChoice, OptimizerName, TrainConfig
from ml_playground.config_loader import load_config
from ml_playground.device import Precision, resolve_precision, seed_everything
from ml_playground.distributed import Ranks
from ml_playground.experiments import find_experiment
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.train.gpt import gpt_loss
from ml_playground.train.loop import Run, TokenFiles, assemble_run, estimate_loss, optimizer_step
from ml_playground.train.schedule import learning_rate_at

TARGET = 1.90  # the time-to-target column
GOAL = 1.80  # what the best setting should reach within the recipe's steps
TIME_GOAL = 0.60  # ... and the most of the baseline's time it may take to reach TARGET
BASELINE = "gpt2+adamw float32"
# The speed recipe (benchmarks/char_speedrun.toml) against BASELINE, nanoGPT's settings:
SPEEDRUN_TIME_GOAL = 0.25  # the most of BASELINE's time to TARGET it may take
SPEEDRUN_VAL_GOAL = 1.65  # the val loss it must reach within BASELINE's whole wall time
SPEEDRUN_CONFIG = Path(__file__).with_name("char_speedrun.toml")
SPEEDRUN = "char speedrun"
SPEEDRUN_EXPERIMENT = "bundestag_char"
SEED = 1337


@dataclass(frozen=True)
class Setting:
    arch: Arch
    optimizer: OptimizerName
    dtype: DTypeChoice

    @property
    def name(self) -> str:
        return f"{self.arch}+{self.optimizer} {self.dtype}"


@dataclass(frozen=True)
class Entrant:
    """One run in a race: its name, its [train] settings, its model."""

    name: str
    train: TrainConfig
    model: GPTConfig

    def scaled_to(self, recipe: Recipe) -> Entrant:
        """The same choices at the recipe's sizes, batch and steps: for the quick smoke run."""
        train = self.train
        updates = {
            "data": train.data.model_copy(update={"batch_size": recipe.batch_size}),
            "schedule": train.schedule.model_copy(
                update={"warmup_iters": recipe.warmup_iters, "lr_decay_iters": recipe.steps}
            ),
            "runtime": train.runtime.model_copy(
                update={
                    "max_iters": recipe.steps,
                    "eval_interval": recipe.eval_interval,
                    "eval_iters": recipe.eval_iters,
                }
            ),
        }
        m = recipe.model
        model = self.model.replace(
            n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size
        )
        return Entrant(self.name, train.model_copy(update=updates), model)


@dataclass(frozen=True)
class Recipe:
    model: GPTConfig
    batch_size: int
    steps: int
    eval_interval: int
    eval_iters: int
    learning_rate: float
    min_lr: float
    warmup_iters: int

    def with_vocab(self, vocab_size: int) -> Recipe:
        return replace(self, model=self.model.replace(vocab_size=vocab_size))

    def entrant(self, setting: Setting) -> Entrant:
        return Entrant(
            setting.name, self.train_config(setting), self.model.replace(arch=setting.arch)
        )

    def train_config(self, setting: Setting) -> TrainConfig:
        return TrainConfig.model_validate(
            {
                "data": {"batch_size": self.batch_size},
                "optim": {
                    "name": setting.optimizer,
                    "learning_rate": self.learning_rate,
                    # nanoGPT's shakespeare_char recipe: few tokens per step, so a shorter
                    # second-moment memory than GPT-2's 0.95 is not needed; 0.99 as there.
                    "beta2": 0.99,
                },
                "schedule": {
                    "warmup_iters": self.warmup_iters,
                    "lr_decay_iters": self.steps,
                    "min_lr": self.min_lr,
                },
                "runtime": {
                    "seed": SEED,
                    "eval_iters": self.eval_iters,
                    "eval_interval": self.eval_interval,
                    "max_iters": self.steps,
                    "dtype": setting.dtype,
                    "device": "cpu",
                },
            }
        )


NANOGPT_CPU = Recipe(
    model=GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
    batch_size=12,
    steps=2000,
    eval_interval=250,
    eval_iters=20,
    learning_rate=1e-3,
    min_lr=1e-4,
    warmup_iters=100,
)
QUICK_RECIPE = Recipe(
    model=GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32),
    batch_size=4,
    steps=6,
    eval_interval=3,
    eval_iters=2,
    learning_rate=1e-3,
    min_lr=1e-4,
    warmup_iters=2,
)
MODELS: tuple[tuple[Arch, OptimizerName], ...] = (
    ("gpt2", "adamw"),
    ("llama", "adamw"),
    ("llama", "muon"),
)
PRECISIONS: tuple[DTypeChoice, ...] = ("float32", "auto")
SETTINGS = tuple(
    Setting(arch, optimizer, dtype) for arch, optimizer in MODELS for dtype in PRECISIONS
)


@dataclass
class QualityResult:
    setting: str
    precision: str  # what the setting's dtype resolved to
    seconds: float = 0.0  # optimizer steps only
    # (step, seconds so far, val loss) at each evaluation
    evals: list[tuple[int, float, float]] = field(default_factory=list[tuple[int, float, float]])

    @property
    def final_val(self) -> float:
        return self.evals[-1][2]

    def seconds_to(self, target: float) -> float | None:
        return next((seconds for _, seconds, val in self.evals if val <= target), None)


class _Contender:
    def __init__(
        self, entrant: Entrant, precision: Precision, train: TokenFile, val: TokenFile
    ) -> None:
        seed_everything(SEED)  # the same batches for every setting; weights per architecture
        model_config = entrant.model
        self.run: Run = assemble_run(
            entrant.train,
            precision,
            Ranks(),
            model=GPT(model_config),
            files=TokenFiles(train.path, val.path, train.dtype, model_config.vocab_size),
            block_size=model_config.block_size,
            loss=gpt_loss,
            write=never_saved,
            description=entrant.name,
            resume=None,
            resume_source="",
            compile_model=entrant.train.runtime.compile,
        )
        self.result = QualityResult(entrant.name, precision.dtype_name)

    @property
    def steps(self) -> int:
        return self.run.train.runtime.max_iters

    def step(self, index: int) -> None:
        train = self.run.train
        lr = learning_rate_at(index, train.optim, train.schedule)
        start = time.perf_counter()
        optimizer_step(self.run, lr)
        self.result.seconds += time.perf_counter() - start
        step = index + 1
        if step % train.runtime.eval_interval == 0 or step == self.steps:
            val = estimate_loss(self.run)["val"]
            self.result.evals.append((step, self.result.seconds, val))


def race(
    entrants: list[tuple[Entrant, Precision]], train: TokenFile, val: TokenFile
) -> list[QualityResult]:
    """Every entrant trained in alternation, one step each per round, until each has run its
    max_iters; each evaluates at its own eval_interval (not on the clock)."""
    contenders = [_Contender(entrant, precision, train, val) for entrant, precision in entrants]
    for index in range(max(c.steps for c in contenders)):
        for contender in contenders:
            if index < contender.steps:
                contender.step(index)
    return [c.result for c in contenders]


def measure_time_to_quality(
    recipe: Recipe,
    train: TokenFile,
    val: TokenFile,
    settings: tuple[Setting, ...] = SETTINGS,
    extra: tuple[Entrant, ...] = (),
) -> list[QualityResult]:
    """Every setting trained side by side on the same batches; see the module docstring.
    `extra` entrants (the speed recipe) race beside them, each in the precision its own
    dtype resolves to.

    A setting whose dtype "auto" resolves to a precision already in the table (float32 on
    a CPU where bfloat16 would be slower) is the same run, so it is trained once and
    listed under both names.
    """
    entrants: dict[tuple[str, str, str], tuple[Entrant, Precision]] = {}
    names: list[tuple[str, tuple[str, str, str]]] = []
    for setting in settings:
        precision = resolve_precision("cpu", setting.dtype)
        key = (setting.arch, setting.optimizer, precision.dtype_name)
        if key not in entrants:
            entrants[key] = (recipe.entrant(setting), precision)
        names.append((setting.name, key))
    for entrant in extra:
        entrants[(entrant.name, "", "")] = (
            entrant,
            resolve_precision("cpu", entrant.train.runtime.dtype),
        )
        names.append((entrant.name, (entrant.name, "", "")))
    results = dict(zip(entrants, race(list(entrants.values()), train, val), strict=True))
    return [replace(results[key], setting=name) for name, key in names]


@dataclass(frozen=True)
class Reached:
    step: int
    seconds: float
    val: float


@dataclass(frozen=True)
class SpeedrunSummary:
    """The speed recipe against BASELINE, from one race."""

    baseline_to_target: Reached | None
    speedrun_to_target: Reached | None
    baseline_wall: float  # BASELINE's optimizer steps, all of them
    best_within_wall: Reached  # the speed recipe's lowest val at an eval inside that time

    @property
    def ratio(self) -> float | None:
        base, run = self.baseline_to_target, self.speedrun_to_target
        return None if base is None or run is None else run.seconds / base.seconds


def first_reaching(result: QualityResult, target: float) -> Reached | None:
    return next((Reached(s, t, v) for s, t, v in result.evals if v <= target), None)


def speedrun_summary(results: list[QualityResult]) -> SpeedrunSummary | None:
    """None unless both the speed recipe and BASELINE raced."""
    by_name = {r.setting: r for r in results}
    baseline, speedrun = by_name.get(BASELINE), by_name.get(SPEEDRUN)
    if baseline is None or speedrun is None:
        return None
    inside = [Reached(s, t, v) for s, t, v in speedrun.evals if t <= baseline.seconds]
    best = min(inside or [Reached(*speedrun.evals[0])], key=lambda r: r.val)
    return SpeedrunSummary(
        first_reaching(baseline, TARGET), first_reaching(speedrun, TARGET), baseline.seconds, best
    )


def settings_results(results: list[QualityResult]) -> list[QualityResult]:
    """The grid of settings on the recipe, without the speed recipe (its own cadence)."""
    return [r for r in results if r.setting != SPEEDRUN]


def render(results: list[QualityResult], recipe: Recipe) -> str:
    """One row per setting: time, val loss at each eval, time to TARGET and its ratio;
    then the speed recipe's evaluations."""
    speedrun = next((r for r in results if r.setting == SPEEDRUN), None)
    results = settings_results(results)
    base_time = _baseline_seconds(results)
    steps = [step for step, _, _ in results[0].evals]
    header = ["setting", "runs in", "wall s", *(f"@{s}" for s in steps), f"to {TARGET}", "ratio"]
    rows = [header]
    for r in results:
        reached = r.seconds_to(TARGET)
        ratio = "" if reached is None or not base_time else f"{reached / base_time:.2f}"
        rows.append(
            [
                r.setting,
                r.precision,
                f"{r.seconds:.0f}",
                *(f"{val:.3f}" for _, _, val in r.evals),
                "-" if reached is None else f"{reached:.0f} s",
                ratio,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    m = recipe.model
    lines += [
        "",
        f"time to quality: char-level Tiny Shakespeare, {m.n_layer}L {m.n_head}H {m.n_embd}d, "
        f"T={m.block_size} B={recipe.batch_size}, {recipe.steps} steps; 'wall s' counts "
        f"optimizer steps only; ratio = time to {TARGET} over gpt2+adamw float32's",
    ]
    if speedrun is not None:
        evals = ", ".join(f"{step}: {val:.3f} @{sec:.0f}s" for step, sec, val in speedrun.evals)
        lines += [
            "",
            f"{SPEEDRUN} ({SPEEDRUN_CONFIG.name}, {speedrun.precision}, "
            f"{speedrun.seconds:.0f} s of steps): {evals}",
        ]
    return "\n".join(lines)


def best_final(results: list[QualityResult]) -> QualityResult:
    return min(settings_results(results), key=lambda r: r.final_val)


def fastest_ratio(results: list[QualityResult]) -> tuple[QualityResult, float] | None:
    """The setting that reached TARGET soonest, and its time over gpt2+adamw float32's."""
    base_time = _baseline_seconds(results)
    reached = [(r, t) for r in settings_results(results) if (t := r.seconds_to(TARGET)) is not None]
    if not reached or not base_time:
        return None
    fastest, seconds = min(reached, key=lambda pair: pair[1])
    return fastest, seconds / base_time


def _baseline_seconds(results: list[QualityResult]) -> float | None:
    """gpt2+adamw float32's time to TARGET, the ratios' denominator; None if it never got there."""
    baseline = next((r for r in results if r.setting == BASELINE), None)
    return baseline.seconds_to(TARGET) if baseline else None


def results_json(results: list[QualityResult]) -> list[dict[str, object]]:
    return [
        {
            "setting": r.setting,
            "precision": r.precision,
            "seconds": r.seconds,
            "evals": [{"step": s, "seconds": t, "val_loss": v} for s, t, v in r.evals],
            "seconds_to_target": r.seconds_to(TARGET),
            "target": TARGET,
        }
        for r in results
    ]


def speedrun_entrant(vocab_size: int, path: Path = SPEEDRUN_CONFIG) -> Entrant:
    """The speed recipe as `train bundestag_char --exp-config path` reads it."""
    experiment = find_experiment(SPEEDRUN_EXPERIMENT)
    train = load_config(path, experiment.directory).config.train
    model = GPTConfig.model_validate({**train.model.model_dump(), "vocab_size": vocab_size})
    return Entrant(SPEEDRUN, train, model)
