"""Prepare throughput (MB/s) and peak memory on a large corpus, one subprocess per run.

Peak RSS is a per-process high-water mark, so each prepare runs in a fresh interpreter
that imports only the data layer, prepares once and reports its own peak RSS: nothing
the benchmark itself allocated (models, the corpus text) can leak into the number. Running
at two corpus sizes shows whether the peak grows with the corpus; the 1 GB estimate
extrapolates both time and peak from the two.

    python -m benchmarks.prepare KIND CORPUS DATASET_DIR   # prints one JSON line
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.memory import peak_rss_bytes
from ml_playground.data.corpus import prepare_token_dataset
from ml_playground.data.tokenizer import TOKENIZER_KINDS, TokenizerKind

MB = 1_000_000
GB = 1_000_000_000
TIKTOKEN_ENCODING = "gpt2"


@dataclass(frozen=True)
class PrepareJob:
    kind: TokenizerKind
    corpus: Path
    dataset_dir: Path


@dataclass(frozen=True)
class PrepareResult:
    kind: TokenizerKind
    corpus_bytes: int
    tokens: int
    seconds: float
    peak_rss_bytes: int
    rss_before_bytes: int  # the interpreter and imports, before prepare starts

    @property
    def megabytes_per_second(self) -> float:
        return self.corpus_bytes / MB / self.seconds


PrepareRunner = Callable[[PrepareJob], PrepareResult]


def prepare_in_process(job: PrepareJob) -> PrepareResult:
    """Prepare once in this process; its peak RSS is this process's lifetime high-water mark."""
    rss_before = peak_rss_bytes()
    start = time.perf_counter()
    outcome = prepare_token_dataset(
        [job.corpus],
        job.dataset_dir,
        tokenizer_kind=job.kind,
        encoding=TIKTOKEN_ENCODING,
        show_progress=False,
    )
    seconds = time.perf_counter() - start
    return PrepareResult(
        kind=job.kind,
        corpus_bytes=job.corpus.stat().st_size,
        tokens=sum(outcome.meta.tokens.values()),
        seconds=seconds,
        peak_rss_bytes=peak_rss_bytes(),
        rss_before_bytes=rss_before,
    )


def prepare_in_subprocess(job: PrepareJob) -> PrepareResult:
    """Prepare once in a fresh interpreter (this module's __main__), so its peak is its own."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.prepare",
            job.kind,
            str(job.corpus),
            str(job.dataset_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"prepare benchmark ({job.kind}, {job.corpus}) failed with exit code "
            f"{completed.returncode}:\n{completed.stderr.strip()}"
        )
    fields = json.loads(completed.stdout.strip().splitlines()[-1])
    return PrepareResult(**fields)


@dataclass(frozen=True)
class PrepareEstimate:
    """Time and peak RSS at `target_bytes`, extrapolated linearly from two measured sizes."""

    kind: TokenizerKind
    target_bytes: int
    seconds: float
    peak_rss_bytes: int
    rss_growth_per_gb: float  # bytes of extra peak per GB of corpus; ~0 when bounded


def extrapolate(small: PrepareResult, large: PrepareResult, target_bytes: int) -> PrepareEstimate:
    """Seconds from the larger run's throughput; peak RSS from the slope between the two."""
    growth = (large.peak_rss_bytes - small.peak_rss_bytes) / (
        large.corpus_bytes - small.corpus_bytes
    )
    peak = large.peak_rss_bytes + max(growth, 0.0) * (target_bytes - large.corpus_bytes)
    return PrepareEstimate(
        kind=large.kind,
        target_bytes=target_bytes,
        seconds=target_bytes / large.corpus_bytes * large.seconds,
        peak_rss_bytes=round(peak),
        rss_growth_per_gb=growth * GB,
    )


def _main(argv: list[str]) -> int:
    usage = "usage: python -m benchmarks.prepare {char,tiktoken} CORPUS DATASET_DIR"
    if len(argv) != 3 or argv[0] not in TOKENIZER_KINDS:
        print(usage, file=sys.stderr)
        return 2
    kind: TokenizerKind = "char" if argv[0] == "char" else "tiktoken"
    result = prepare_in_process(PrepareJob(kind, Path(argv[1]), Path(argv[2])))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
