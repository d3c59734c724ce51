"""`make bench`: training, sampling, prepare and matmul throughput, and LoRA fine-tuning
against the transformers Trainer, measured in one run.

    uv run python -m benchmarks.run              # the full run: minutes, then ~25 of LoRA
    uv run python -m benchmarks.run --quick      # tiny sizes, seconds: a smoke run
    uv run python -m benchmarks.run --only lora  # the LoRA rows alone (--quick works too)
    uv run python -m benchmarks.run --only scratch  # everything but the LoRA rows
    uv run python -m benchmarks.run --only lora --lora-rows bf16-attn-ckpt  # one LoRA row
    uv run python -m benchmarks.run --out path/bench.json --threads 1

Prints one table and writes the same numbers as JSON (default bench_out/bench.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks import corpus, hardware, quality, report
from benchmarks.lora import FULL_LORA, QUICK_LORA, LoraSpec, measure_lora
from benchmarks.prepare import (
    GB,
    MB,
    PrepareEstimate,
    PrepareJob,
    PrepareResult,
    PrepareRunner,
    extrapolate,
    prepare_in_subprocess,
)
from benchmarks.sampling import (
    DecodeSpec,
    SamplingSpec,
    measure_batching,
    measure_decode,
    measure_sampling,
)
from benchmarks.training import (
    PRECISIONS,
    TokenFile,
    TrainingSpec,
    measure_optimizer_ratio,
    measure_training,
    write_random_tokens,
)
from ml_playground.data.corpus import prepare_token_dataset
from ml_playground.data.record_split import token_file
from ml_playground.data.tokenizer import TokenizerKind
from ml_playground.model.config import GPTConfig

DEFAULT_OUT = corpus.REPO_ROOT / "bench_out" / "bench.json"
GPT2_VOCAB = 50257  # padded to 50304 inside the model
GPT2_LABEL = "GPT-2 vocab 50257 (padded 50304), random ids"
# Tiny Shakespeare's character count; the run uses the prepared text's actual vocabulary.
CHAR_VOCAB = 65


@dataclass(frozen=True)
class Settings:
    mode: str
    judged: bool  # whether the sizes are the ones the targets are about
    matmul_size: int
    matmul_repeats: int
    bandwidth_megabytes: int  # larger than a server CPU's last-level cache in full runs
    small: TrainingSpec  # trained on the char-level text, so its val loss means something
    medium: TrainingSpec
    val_batches: int
    random_tokens: int  # length of the medium model's token file
    sampling: SamplingSpec
    prepare_sizes: tuple[int, int]  # corpus bytes; two sizes show whether the peak grows
    quality: quality.Recipe  # the time-to-quality runs
    lora: LoraSpec  # ours vs the transformers Trainer, each side in its own process
    decode: tuple[DecodeSpec, ...]  # batch-1 decode, ours vs llama-bench


FULL_MEDIUM = GPTConfig(vocab_size=GPT2_VOCAB, block_size=256, n_layer=6, n_head=6, n_embd=384)
# The `shakespeare` experiment's model: 7.3M parameters, most of them the tied embedding.
SHAKESPEARE = GPTConfig(
    vocab_size=GPT2_VOCAB, block_size=64, n_layer=4, n_head=4, n_embd=128, arch="llama"
)
FULL = Settings(
    mode="full",
    judged=True,
    matmul_size=4096,
    matmul_repeats=5,
    bandwidth_megabytes=400,
    small=TrainingSpec(
        "small",
        GPTConfig(vocab_size=CHAR_VOCAB, block_size=64, n_layer=4, n_head=4, n_embd=128),
        batch_size=12,
        warmup_steps=5,
        timed_steps=95,
        vocab="char vocab",
    ),
    medium=TrainingSpec(
        "medium", FULL_MEDIUM, batch_size=16, warmup_steps=1, timed_steps=3, vocab=GPT2_LABEL
    ),
    val_batches=20,
    random_tokens=1_000_000,
    sampling=SamplingSpec("medium", FULL_MEDIUM, 500, cached_repeats=3, uncached_repeats=1),
    prepare_sizes=(50 * MB, 100 * MB),
    quality=quality.NANOGPT_CPU,
    lora=FULL_LORA,
    decode=(DecodeSpec("shakespeare", SHAKESPEARE), DecodeSpec("medium", FULL_MEDIUM)),
)
QUICK_MEDIUM = GPTConfig(vocab_size=GPT2_VOCAB, block_size=32, n_layer=1, n_head=2, n_embd=32)
QUICK = Settings(
    mode="quick",
    judged=False,
    matmul_size=512,
    matmul_repeats=3,
    bandwidth_megabytes=8,
    small=TrainingSpec(
        "small",
        GPTConfig(vocab_size=CHAR_VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32),
        batch_size=4,
        warmup_steps=1,
        timed_steps=3,
        vocab="char vocab",
    ),
    medium=TrainingSpec(
        "medium", QUICK_MEDIUM, batch_size=2, warmup_steps=1, timed_steps=2, vocab=GPT2_LABEL
    ),
    val_batches=2,
    random_tokens=10_000,
    sampling=SamplingSpec(
        "medium",
        QUICK_MEDIUM,
        40,
        cached_repeats=2,
        uncached_repeats=1,
        batch_size=4,
        batch_new_tokens=16,
        batch_repeats=1,
    ),
    prepare_sizes=(200_000, 400_000),
    quality=quality.QUICK_RECIPE,
    lora=QUICK_LORA,
    decode=(DecodeSpec("medium", QUICK_MEDIUM, new_tokens=16, repeats=2),),
)


def run_benchmarks(
    settings: Settings, work_dir: Path, prepare_runner: PrepareRunner
) -> report.BenchResults:
    """Every measurement, in order; temporary files go under `work_dir`."""
    started = time.perf_counter()
    environment = hardware.environment()
    text, text_origin = corpus.seed_text()
    notes = [f"text: {text_origin}; MB = 10^6 bytes"]
    if not settings.judged:
        notes.append("quick run: tiny sizes, so the targets are not judged (n/a)")
    if environment.load_average > environment.cores:
        notes.append(
            f"the machine was busy (load {environment.load_average:.1f} on {environment.cores} "
            "cores): absolute rates are low, and paths made of many small ops (KV-cache "
            "decoding, the small model) suffer most; compare ratios, or rerun idle or with "
            "--threads 1"
        )

    _progress(started, "matmul FLOP/s")
    matmul = [
        hardware.measure_matmul(dtype, settings.matmul_size, settings.matmul_repeats)
        for dtype in PRECISIONS
    ]
    _progress(started, "memory read bandwidth")
    bandwidth = hardware.measure_memory_bandwidth(
        settings.bandwidth_megabytes, settings.matmul_repeats
    )

    _progress(started, "training the small model on char-level text, fp32 and bf16 side by side")
    source = work_dir / "text.txt"
    source.write_text(text, encoding="utf-8")
    char_dir = work_dir / "char"
    meta = prepare_token_dataset(
        [source], char_dir, tokenizer_kind="char", show_progress=False
    ).meta
    small = settings.small.with_vocab(meta.vocab_size, f"char vocab {meta.vocab_size}")
    training = measure_training(
        small,
        TokenFile(char_dir / token_file("train"), meta.dtype),
        TokenFile(char_dir / token_file("val"), meta.dtype),
        val_batches=settings.val_batches,
        matmul_size=settings.matmul_size,
        matmul_repeats=settings.matmul_repeats,
    )

    recipe = settings.quality.with_vocab(meta.vocab_size)
    _progress(
        started,
        f"time to quality: {len(quality.SETTINGS)} settings x {recipe.steps} steps side by side",
    )
    speedrun = quality.speedrun_entrant(meta.vocab_size)
    if not settings.judged:
        speedrun = speedrun.scaled_to(recipe)
    time_to_quality = quality.measure_time_to_quality(
        recipe,
        TokenFile(char_dir / token_file("train"), meta.dtype),
        TokenFile(char_dir / token_file("val"), meta.dtype),
        extra=(speedrun,),
    )
    # Muon's step against AdamW's: the char model as the speed recipe builds it (llama),
    # and the medium model below.
    char_llama = small.with_arch("llama")
    _progress(started, f"{char_llama.name}: Muon and AdamW steps side by side")
    optimizer_ratios = [
        measure_optimizer_ratio(char_llama, TokenFile(char_dir / token_file("train"), meta.dtype))
    ]

    random_ids = write_random_tokens(work_dir / "random.bin", settings.random_tokens, GPT2_VOCAB)
    mediums = [settings.medium, settings.medium.with_arch("llama")]
    for medium in mediums:
        _progress(started, f"training {medium.name}, fp32 and bf16 side by side")
        training += measure_training(
            medium,
            random_ids,
            None,
            val_batches=0,
            matmul_size=settings.matmul_size,
            matmul_repeats=settings.matmul_repeats,
        )

    _progress(started, f"{settings.medium.name}: Muon and AdamW steps side by side")
    optimizer_ratios.append(measure_optimizer_ratio(settings.medium, random_ids))

    _progress(started, "sampling with and without the KV cache, fp32 and bf16")
    sampling = measure_sampling(settings.sampling)
    _progress(
        started, f"sampling {settings.sampling.batch_size} samples as one batch and one by one"
    )
    batching = measure_batching(settings.sampling)
    _progress(started, "decoding at batch 1, ours and llama-bench alternating")
    decode = [measure_decode(spec, work_dir) for spec in settings.decode]

    prepare, estimates = _prepare_benchmarks(
        settings, text, work_dir, prepare_runner, notes=notes, started=started
    )
    notes.append(f"benchmark wall time: {time.perf_counter() - started:,.0f} s")
    return report.BenchResults(
        mode=settings.mode,
        judged=settings.judged,
        environment=environment,
        matmul=matmul,
        bandwidth=bandwidth,
        training_specs=[small, *mediums],
        training=training,
        optimizer_ratios=optimizer_ratios,
        quality_recipe=recipe,
        quality=time_to_quality,
        sampling=sampling,
        batching=batching,
        decode=decode,
        prepare=prepare,
        prepare_estimates=estimates,
        notes=notes,
    )


def run_lora_benchmark(settings: Settings, work_dir: Path) -> report.LoraBench:
    """The LoRA rows: every setting, ours and the Trainer's, side by side."""
    started = time.perf_counter()
    environment = hardware.environment()
    text, text_origin = corpus.seed_text()
    lora = measure_lora(
        settings.lora, text, work_dir, progress=lambda stage: _progress(started, stage)
    )
    notes = [
        f"LoRA text: {text_origin}; peak RSS is each side's own process's VmHWM "
        "(/proc/self/status), not ru_maxrss, which keeps the parent's peak across exec",
        f"LoRA wall time: {time.perf_counter() - started:,.0f} s; load average "
        f"{environment.load_average:.1f} at its start, {os.getloadavg()[0]:.1f} at its end "
        "(other work on the machine slows whichever side runs beside it)",
    ]
    if not settings.judged:
        notes.append("quick LoRA run: a tiny model, so its targets are not judged (n/a)")
    return report.LoraBench(settings.mode, settings.judged, environment, lora, notes)


def _prepare_benchmarks(
    settings: Settings,
    text: str,
    work_dir: Path,
    runner: PrepareRunner,
    *,
    notes: list[str],
    started: float,
) -> tuple[list[PrepareResult], list[PrepareEstimate]]:
    """Each tokenizer at both corpus sizes, then its extrapolation to 1 GB."""
    kinds: list[TokenizerKind] = ["char"]
    if _use_tiktoken_cache():
        kinds.append("tiktoken")
    else:
        notes.append(
            "tiktoken gpt2 prepare skipped: TIKTOKEN_CACHE_DIR is unset and "
            f"{corpus.SHARED_TIKTOKEN} does not exist"
        )
    corpora: list[Path] = []
    for size in settings.prepare_sizes:
        path = work_dir / f"corpus-{size}.txt"
        corpus.write_corpus(path, text, size)
        corpora.append(path)
    results: list[PrepareResult] = []
    estimates: list[PrepareEstimate] = []
    for kind in kinds:
        runs: list[PrepareResult] = []
        for path in corpora:
            _progress(started, f"prepare, {kind}, {path.stat().st_size / MB:,.1f} MB")
            dataset_dir = work_dir / f"prepared-{kind}"
            runs.append(runner(PrepareJob(kind, path, dataset_dir)))
            shutil.rmtree(dataset_dir)  # one prepared dataset on disk at a time
        results += runs
        estimates.append(extrapolate(runs[0], runs[-1], GB))
    return results, estimates


def _use_tiktoken_cache() -> bool:
    """Point tiktoken at a local copy of its ranks (there is no network); False if none."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return True
    if corpus.SHARED_TIKTOKEN.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(corpus.SHARED_TIKTOKEN)
        return True
    return False


def _progress(started: float, stage: str) -> None:
    elapsed = time.perf_counter() - started
    print(f"bench [{elapsed:4.0f} s]: {stage} ...", file=sys.stderr, flush=True)


def _lora_rows(spec: LoraSpec, slugs: Sequence[str], parser: argparse.ArgumentParser) -> LoraSpec:
    known = {setting.slug: setting for setting in spec.settings}
    unknown = [slug for slug in slugs if slug not in known]
    if unknown:
        parser.error(f"unknown LoRA row {unknown[0]!r}; rows: {', '.join(known)}")
    return replace(spec, settings=tuple(known[slug] for slug in slugs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--only",
        choices=("lora", "scratch"),
        default=None,
        help="run one area alone: the LoRA rows, or everything else (from scratch, "
        "sampling, decoding, prepare)",
    )
    parser.add_argument(
        "--lora-rows",
        nargs="+",
        default=None,
        metavar="ROW",
        help="only these LoRA rows, by slug (e.g. bf16-attn-ckpt fp32-attn-ckpt)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    if args.lora_rows is not None:
        settings = replace(settings, lora=_lora_rows(settings.lora, args.lora_rows, parser))
    with tempfile.TemporaryDirectory(prefix="ml-playground-bench-") as tmp:
        if args.only == "scratch":
            results = run_benchmarks(settings, Path(tmp), prepare_in_subprocess)
            print(report.render(results))
            report.write_json(results, args.out)
            print(f"\nwrote {args.out}")
            return 0
        if args.only == "lora":
            lora = run_lora_benchmark(settings, Path(tmp))
            print(report.render_lora(lora))
            report.write_lora_json(lora, args.out)
            print(f"\nwrote {args.out}")
            return 0
        results = run_benchmarks(settings, Path(tmp), prepare_in_subprocess)
        lora = run_lora_benchmark(settings, Path(tmp) / "lora")
    results = replace(results, lora=lora.lora, notes=[*results.notes, *lora.notes])
    print(report.render(results))
    report.write_json(results, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
