"""The benchmark report: every measurement in one aligned table, the targets, and JSON.

Ratios are the headline: both sides of each were measured in the same run, interleaved,
so they survive a noisy machine far better than the absolute rates next to them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import quality
from benchmarks.hardware import BandwidthResult, Environment, MatmulResult
from benchmarks.lora import LoraResults, LoraRow
from benchmarks.prepare import MB, PrepareEstimate, PrepareResult
from benchmarks.quality import QualityResult, Recipe
from benchmarks.sampling import BatchResult, DecodeResult, SamplingResult
from benchmarks.training import OptimizerRatio, TrainingResult, TrainingSpec
from ml_playground import atomic
from ml_playground.config import DType

KV_CACHE_TARGET = 10.0  # KV cache vs no cache, medium model
DECODE_TARGET = 1.0  # our batch-1 decode tokens/s over llama-bench's tg on our GGUF
BANDWIDTH_TARGET = 0.8  # cached decode tokens/s over the memory-bandwidth ceiling
BF16_TARGET = 1.8  # bf16 vs fp32 training speed, medium model, where bf16 matrix units exist
PREPARE_RSS_TARGET_MB = 500.0  # prepare's peak RSS at the 1 GB corpus target
VAL_LOSS_TOLERANCE = 0.05  # nats bf16 may end above fp32 and still count as no worse
MUON_STEP_RATIO = 1.15  # a Muon step over an AdamW step, char and medium models
JUDGED_MODEL = "medium"  # the speed targets are about the realistic model
# LoRA, ours vs the transformers Trainer: tokens/s ratio, and peak RSS ratio in every row.
LORA_HEADLINE_SPEEDUP = 2.0  # bf16, attention targets, gradient checkpointing on
LORA_SPEEDUP = 1.5  # every other setting
LORA_RSS_RATIO = 0.6
HEADER = ("area", "case", "result", "detail", "target", "check")


@dataclass(frozen=True)
class BenchResults:
    mode: str
    judged: bool  # False for quick runs: tiny sizes say nothing about the targets
    environment: Environment
    matmul: list[MatmulResult]
    bandwidth: BandwidthResult
    training_specs: list[TrainingSpec]
    training: list[TrainingResult]
    optimizer_ratios: list[OptimizerRatio]
    quality_recipe: Recipe
    quality: list[QualityResult]
    sampling: list[SamplingResult]
    batching: BatchResult
    prepare: list[PrepareResult]
    prepare_estimates: list[PrepareEstimate]
    notes: list[str]
    lora: LoraResults | None = None  # measured by run.py after the rest, when asked for
    decode: list[DecodeResult] = field(default_factory=list[DecodeResult])


@dataclass(frozen=True)
class LoraBench:
    """`--only lora`: the LoRA rows alone, with the machine they were measured on."""

    mode: str
    judged: bool
    environment: Environment
    lora: LoraResults
    notes: list[str]


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    target: str
    verdict: str  # PASS, FAIL, or n/a where the target does not apply


@dataclass(frozen=True)
class Row:
    area: str
    case: str
    result: str
    detail: str = ""
    check: Check | None = None

    def cells(self) -> tuple[str, ...]:
        check = self.check
        return (
            self.area,
            self.case,
            self.result,
            self.detail,
            check.target if check else "",
            check.verdict if check else "",
        )


def table_rows(results: BenchResults) -> list[Row]:
    return [
        *_matmul_rows(results),
        *_training_rows(results),
        *_optimizer_rows(results),
        *_quality_rows(results),
        *_speedrun_rows(results),
        *_sampling_rows(results),
        *_decode_rows(results),
        *_prepare_rows(results),
        *(lora_rows(results.lora, judged=results.judged) if results.lora else []),
    ]


def render(results: BenchResults) -> str:
    """The environment line, the table, then what the short names mean."""
    title = f"ml-playground benchmarks ({results.mode})"
    lines = _table(title, results.environment, table_rows(results))
    lines.extend(f"{spec.name}: {spec.describe()}" for spec in results.training_specs)
    if results.lora is not None:
        lines.append(results.lora.spec.describe())
    lines.extend(results.notes)
    lines += ["", quality.render(results.quality, results.quality_recipe)]
    return "\n".join(lines)


def render_lora(bench: LoraBench) -> str:
    """`render` for a run of the LoRA rows alone."""
    title = f"ml-playground benchmarks, LoRA only ({bench.mode})"
    rows = lora_rows(bench.lora, judged=bench.judged)
    lines = _table(title, bench.environment, rows)
    lines += [bench.lora.spec.describe(), *bench.notes]
    return "\n".join(lines)


def _table(title: str, environment: Environment, rows: list[Row]) -> list[str]:
    """The title, the environment line and the aligned table, then a blank line."""
    cells = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    rule = tuple("-" * width for width in widths)
    lines = [title, environment.describe(), ""]
    for row in (cells[0], rule, *cells[1:]):
        aligned = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(aligned).rstrip())
    lines.append("")
    return lines


def write_json(results: BenchResults, path: Path) -> None:
    """The table's numbers unrounded, with the checks, written atomically."""
    payload = {
        "mode": results.mode,
        "environment": _environment_json(results.environment),
        "matmul": [asdict(m) for m in results.matmul],
        "memory_bandwidth": asdict(results.bandwidth),
        "training_models": {
            spec.name: {**spec.model.to_dict(), "batch_size": spec.batch_size, "vocab": spec.vocab}
            for spec in results.training_specs
        },
        "training": [asdict(r) for r in results.training],
        "optimizer_ratios": [{**asdict(r), "ratio": r.ratio} for r in results.optimizer_ratios],
        "time_to_quality": quality.results_json(results.quality),
        "speedrun": _speedrun_json(results),
        "sampling": [asdict(s) for s in results.sampling],
        "sampling_batch": {
            **asdict(results.batching),
            "batch_tokens_per_second": results.batching.batch_tokens_per_second,
            "sequential_tokens_per_second": results.batching.sequential_tokens_per_second,
            "speedup": results.batching.speedup,
        },
        "prepare": [
            {**asdict(p), "megabytes_per_second": p.megabytes_per_second} for p in results.prepare
        ],
        "decode": [{**asdict(d), "ratio": d.ratio} for d in results.decode],
        "prepare_estimates": [asdict(e) for e in results.prepare_estimates],
        "lora": results.lora.to_dict() if results.lora else None,
        "checks": [asdict(row.check) for row in table_rows(results) if row.check is not None],
        "notes": results.notes,
    }
    atomic.write_json(path, payload)


def write_lora_json(bench: LoraBench, path: Path) -> None:
    """`write_json` for a run of the LoRA rows alone."""
    rows = lora_rows(bench.lora, judged=bench.judged)
    payload = {
        "mode": bench.mode,
        "environment": _environment_json(bench.environment),
        "lora": bench.lora.to_dict(),
        "checks": [asdict(row.check) for row in rows if row.check is not None],
        "notes": bench.notes,
    }
    atomic.write_json(path, payload)


def _environment_json(environment: Environment) -> dict[str, object]:
    return {**asdict(environment), "has_bf16_matrix_units": environment.has_bf16_matrix_units}


# --- rows, one function per area ----------------------------------------------------------


def _matmul_rows(results: BenchResults) -> list[Row]:
    fp32 = next((m for m in results.matmul if m.dtype == "float32"), None)
    rows: list[Row] = []
    for m in results.matmul:
        detail = f"{m.seconds * 1000:,.1f} ms per matmul"
        if fp32 is not None and m is not fp32:
            detail += f", {m.flops_per_second / fp32.flops_per_second:.2f}x fp32"
        rate = f"{m.flops_per_second / 1e9:,.1f} GFLOP/s"
        rows.append(Row("matmul", f"{_short(m.dtype)} {m.size}x{m.size}", rate, detail))
    bw = results.bandwidth
    rows.append(
        Row(
            "memory",
            f"read {bw.megabytes:,} MB",
            f"{bw.bytes_per_second / 1e9:,.1f} GB/s",
            f"{bw.seconds * 1000:,.1f} ms per pass; bounds KV-cache decoding",
        )
    )
    return rows


def _training_rows(results: BenchResults) -> list[Row]:
    rows: list[Row] = []
    for spec in results.training_specs:
        runs = {r.dtype: r for r in results.training if r.model == spec.name}
        for r in runs.values():
            detail = (
                f"{r.step_seconds * 1000:,.0f} ms/step, MFU {r.mfu:.1%} of "
                f"{r.matmul_flops_per_second / 1e9:,.0f} GFLOP/s"
            )
            if r.val_loss is not None:
                detail += f", val loss {r.val_loss:.4f} after {r.steps} steps"
            rate = f"{r.tokens_per_second:,.0f} tok/s"
            rows.append(Row("train", f"{spec.name} {_short(r.dtype)}", rate, detail))
        fp32, bf16 = runs.get("float32"), runs.get("bfloat16")
        if fp32 is None or bf16 is None:
            continue
        speedup = bf16.tokens_per_second / fp32.tokens_per_second
        check = None
        if spec.name == JUDGED_MODEL:
            check = _check(
                results,
                "bf16 training speed-up",
                speedup,
                f">= {BF16_TARGET:g}x",
                speedup >= BF16_TARGET,
                applies=results.environment.has_bf16_matrix_units,
            )
        case = f"{spec.name} bf16/fp32 speed"
        rows.append(Row("train", case, f"{speedup:.2f}x", "interleaved steps", check))
        if fp32.val_loss is not None and bf16.val_loss is not None:
            delta = bf16.val_loss - fp32.val_loss
            check = _check(
                results,
                "bf16 val loss - fp32",
                delta,
                f"<= +{VAL_LOSS_TOLERANCE:g}",
                delta <= VAL_LOSS_TOLERANCE,
            )
            detail = "same seed and batches, evaluated in fp32"
            rows.append(
                Row("train", f"{spec.name} val loss bf16-fp32", f"{delta:+.4f}", detail, check)
            )
    return rows


def _quality_rows(results: BenchResults) -> list[Row]:
    """The two time-to-quality targets; the table of every setting follows the main table."""
    if not results.quality:
        return []
    best = quality.best_final(results.quality)
    rows = [
        Row(
            "quality",
            f"best val after {results.quality_recipe.steps} steps",
            f"{best.final_val:.3f}",
            best.setting,
            _check(
                results,
                "best val loss",
                best.final_val,
                f"<= {quality.GOAL:g}",
                best.final_val <= quality.GOAL,
            ),
        )
    ]
    fastest = quality.fastest_ratio(results.quality)
    if fastest is not None:
        setting, ratio = fastest
        rows.append(
            Row(
                "quality",
                f"time to val {quality.TARGET:g} vs {quality.BASELINE}",
                f"{ratio:.2f}x",
                setting.setting,
                _check(
                    results,
                    "time to target ratio",
                    ratio,
                    f"<= {quality.TIME_GOAL:g}",
                    ratio <= quality.TIME_GOAL,
                ),
            )
        )
    return rows


def _optimizer_rows(results: BenchResults) -> list[Row]:
    return [
        Row(
            "train",
            f"{r.model} {_short(r.dtype)} muon/adamw step",
            f"{r.ratio:.2f}x",
            f"{r.muon_seconds * 1000:,.0f} vs {r.adamw_seconds * 1000:,.0f} ms/step, interleaved",
            _check(
                results,
                f"{r.model} muon/adamw step",
                r.ratio,
                f"<= {MUON_STEP_RATIO:g}x",
                r.ratio <= MUON_STEP_RATIO,
            ),
        )
        for r in results.optimizer_ratios
    ]


def _speedrun_rows(results: BenchResults) -> list[Row]:
    """Time to val TARGET for nanoGPT's settings and the speed recipe, their ratio, and the
    recipe's best val within the baseline's wall time."""
    summary = quality.speedrun_summary(results.quality)
    if summary is None:
        return []
    target = quality.TARGET

    def reached(r: quality.Reached | None) -> tuple[str, str]:
        if r is None:
            return "-", "never reached"
        return f"{r.seconds:.1f} s", f"step {r.step}, val {r.val:.3f}"

    base, run = summary.baseline_to_target, summary.speedrun_to_target
    ratio = summary.ratio
    best = summary.best_within_wall
    return [
        Row("quality", f"to val {target:g}: {quality.BASELINE} (nanoGPT)", *reached(base)),
        Row(
            "quality",
            f"to val {target:g}: {quality.SPEEDRUN}",
            *reached(run),
            _check(
                results,
                "speedrun time to target ratio",
                math.inf if ratio is None else ratio,
                f"<= {quality.SPEEDRUN_TIME_GOAL:g}x",
                ratio is not None and ratio <= quality.SPEEDRUN_TIME_GOAL,
            ),
        ),
        Row(
            "quality",
            f"{quality.SPEEDRUN} / nanoGPT time to {target:g}",
            "-" if ratio is None else f"{ratio:.2f}x",
            "optimizer steps only, raced in alternation",
        ),
        Row(
            "quality",
            f"{quality.SPEEDRUN} val within nanoGPT's {summary.baseline_wall:.0f} s",
            f"{best.val:.3f}",
            f"step {best.step}, {best.seconds:.1f} s",
            _check(
                results,
                "speedrun val within baseline wall time",
                best.val,
                f"<= {quality.SPEEDRUN_VAL_GOAL:g}",
                best.val <= quality.SPEEDRUN_VAL_GOAL,
            ),
        ),
    ]


def _speedrun_json(results: BenchResults) -> dict[str, object] | None:
    summary = quality.speedrun_summary(results.quality)
    if summary is None:
        return None
    return {**asdict(summary), "ratio": summary.ratio, "config": str(quality.SPEEDRUN_CONFIG)}


def _sampling_rows(results: BenchResults) -> list[Row]:
    rows: list[Row] = []
    for s in results.sampling:
        runs = "1 run" if s.runs == 1 else f"median of {s.runs}"
        rows.append(
            Row(
                "sample",
                f"{s.model} {_short(s.dtype)} {'KV cache' if s.use_cache else 'no cache'}",
                f"{s.tokens_per_second:,.1f} tok/s",
                f"{s.new_tokens} new tokens in {s.seconds:,.1f} s, {runs}",
            )
        )
    dtypes: dict[DType, None] = dict.fromkeys(s.dtype for s in results.sampling)
    for dtype in dtypes:
        by_cache = {s.use_cache: s for s in results.sampling if s.dtype == dtype}
        cached, uncached = by_cache.get(True), by_cache.get(False)
        if cached is None or uncached is None:
            continue
        speedup = cached.tokens_per_second / uncached.tokens_per_second
        # The target compares like with like in the sampler's default precision.
        check = None
        if dtype == "float32":
            check = _check(
                results,
                "KV cache speed-up",
                speedup,
                f">= {KV_CACHE_TARGET:g}x",
                speedup >= KV_CACHE_TARGET,
            )
        ceiling = results.bandwidth.bytes_per_second / cached.bytes_per_cached_token
        detail = (
            f"interleaved; reading {cached.bytes_per_cached_token / 1e6:,.0f} MB per cached "
            f"token caps it at {ceiling:,.0f} tok/s = {ceiling / uncached.tokens_per_second:.1f}x "
            f"(cache at {cached.tokens_per_second / ceiling:.0%} of that)"
        )
        case = f"{cached.model} {_short(dtype)} cache/no-cache"
        rows.append(Row("sample", case, f"{speedup:.1f}x", detail, check))
        share = cached.tokens_per_second / ceiling
        check = _check(
            results,
            "cached decode share of the bandwidth ceiling",
            share,
            f">= {BANDWIDTH_TARGET:.0%}",
            share >= BANDWIDTH_TARGET,
            applies=dtype == "float32",
        )
        detail = "batch 1; the ceiling reads every weight and cached key/value once per token"
        case = f"{cached.model} {_short(dtype)} cached decode / ceiling"
        rows.append(Row("sample", case, f"{share:.0%}", detail, check))
    b = results.batching
    runs = "1 run" if b.runs == 1 else f"median of {b.runs}"
    rows.append(
        Row(
            "sample",
            f"{b.model} {_short(b.dtype)} {b.samples} samples batch/one by one",
            f"{b.speedup:.1f}x",
            f"{b.batch_tokens_per_second:,.1f} vs {b.sequential_tokens_per_second:,.1f} tok/s, "
            f"{b.samples} x {b.new_tokens} new tokens, interleaved, {runs}",
        )
    )
    return rows


def _decode_rows(results: BenchResults) -> list[Row]:
    rows: list[Row] = []
    for d in results.decode:
        case = f"{d.model} {_short(d.dtype)} batch 1, ours/llama.cpp"
        ours = f"ours {d.ours_tokens_per_second:,.1f} tok/s (default filters)"
        runs = f"{d.new_tokens} tokens, {d.threads} threads, median of {d.runs} alternating"
        if d.ratio is None or d.llama_tokens_per_second is None:
            rows.append(Row("decode", case, "n/a", f"{ours}; {d.llama_note}"))
            continue
        theirs = f"{d.llama_tokens_per_second:,.1f} tok/s ({d.llama_note})"
        check = _check(
            results,
            f"{d.model} decode vs llama.cpp",
            d.ratio,
            f">= {DECODE_TARGET:g}x",
            d.ratio >= DECODE_TARGET,
        )
        rows.append(Row("decode", case, f"{d.ratio:.2f}x", f"{ours} vs {theirs}; {runs}", check))
    return rows


def _prepare_rows(results: BenchResults) -> list[Row]:
    rows: list[Row] = []
    for estimate in results.prepare_estimates:
        name = _tokenizer(estimate.kind)
        for p in (p for p in results.prepare if p.kind == estimate.kind):
            rows.append(
                Row(
                    "prepare",
                    f"{name} {p.corpus_bytes / MB:,.1f} MB",
                    f"{p.megabytes_per_second:,.2f} MB/s",
                    f"{p.seconds:,.1f} s, peak RSS {p.peak_rss_bytes / MB:,.0f} MB "
                    f"({p.rss_before_bytes / MB:,.0f} MB before prepare)",
                )
            )
        peak_mb = estimate.peak_rss_bytes / MB
        check = _check(
            results,
            f"prepare peak RSS at 1 GB ({name})",
            peak_mb,
            f"< {PREPARE_RSS_TARGET_MB:g} MB",
            peak_mb < PREPARE_RSS_TARGET_MB,
        )
        rows.append(
            Row(
                "prepare",
                f"{name} {estimate.target_bytes / 1e9:g} GB (est.)",
                f"{estimate.seconds / 60:,.1f} min",
                f"peak RSS {peak_mb:,.0f} MB (grows {estimate.rss_growth_per_gb / MB:+,.0f} MB/GB)",
                check,
            )
        )
    return rows


def lora_rows(lora: LoraResults, *, judged: bool) -> list[Row]:
    """Two rows per setting: ours vs the Trainer in speed, then in peak RSS."""
    rows: list[Row] = []
    for row in lora.rows:
        name = row.setting.name
        target = LORA_HEADLINE_SPEEDUP if _is_headline(row) else LORA_SPEEDUP
        speed = _judge(
            judged,
            f"LoRA {name} tokens/s vs Trainer",
            row.speedup,
            f">= {target:g}x",
            row.speedup >= target,
        )
        detail = (
            f"ours {row.ours.step_median * 1000:,.0f} ms/step {row.tokens_per_second('ours'):,.0f} "
            f"tok/s, Trainer {row.trainer.step_median * 1000:,.0f} ms/step "
            f"{row.tokens_per_second('trainer'):,.0f} tok/s"
        )
        rows.append(Row("lora", f"{name} ours/Trainer speed", f"{row.speedup:.2f}x", detail, speed))
        memory = _judge(
            judged,
            f"LoRA {name} peak RSS vs Trainer",
            row.rss_ratio,
            f"<= {LORA_RSS_RATIO:g}x",
            row.rss_ratio <= LORA_RSS_RATIO,
        )
        detail = (
            f"ours {row.ours.peak_rss_bytes / MB:,.0f} MB, "
            f"Trainer {row.trainer.peak_rss_bytes / MB:,.0f} MB"
        )
        case = f"{name} ours/Trainer peak RSS"
        rows.append(Row("lora", case, f"{row.rss_ratio:.2f}x", detail, memory))
    return rows


def _is_headline(row: LoraRow) -> bool:
    setting = row.setting
    return setting.dtype == "bfloat16" and not setting.mlp and setting.checkpointing


def _check(
    results: BenchResults,
    name: str,
    value: float,
    target: str,
    passed: bool,
    *,
    applies: bool = True,
) -> Check:
    return _judge(results.judged, name, value, target, passed, applies=applies)


def _judge(
    judged: bool, name: str, value: float, target: str, passed: bool, *, applies: bool = True
) -> Check:
    if not (judged and applies):
        return Check(name, value, target, "n/a")
    return Check(name, value, target, "PASS" if passed else "FAIL")


def _short(dtype: DType) -> str:
    return {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)


def _tokenizer(kind: str) -> str:
    return "tiktoken gpt2" if kind == "tiktoken" else kind
