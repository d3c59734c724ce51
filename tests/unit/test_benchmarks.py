"""`make bench` in miniature: the quick settings measure every area and render one table.

No timing is asserted (this machine is shared and noisy); only that every measurement
happened, produced positive numbers, and lands in the table and the JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks import quality, report
from benchmarks.prepare import prepare_in_process
from benchmarks.run import QUICK, run_benchmarks
from benchmarks.sampling import LLAMA_BENCH, LLAMA_BENCH_MISSING, DecodeSpec, measure_decode
from ml_playground.config_loader import load_config
from ml_playground.data.sources import TINY_SHAKESPEARE
from ml_playground.experiments import find_experiment


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny models on one thread: with xdist workers sharing the cores, torch's spinning
    thread pool would slow every op down a hundredfold."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_quick_benchmark_measures_every_area_and_renders_one_table(tmp_path: Path) -> None:
    # Prepare runs in-process here (unit tests start no subprocess); `make bench` isolates it.
    results = run_benchmarks(QUICK, tmp_path, prepare_in_process)

    assert [m.dtype for m in results.matmul] == ["float32", "bfloat16"]
    assert all(m.flops_per_second > 0 for m in results.matmul)
    assert {(r.model, r.dtype) for r in results.training} == {
        (model, dtype)
        for model in ("small", "medium", "medium-llama")
        for dtype in ("float32", "bfloat16")
    }
    assert all(r.tokens_per_second > 0 and r.mfu > 0 for r in results.training)
    small_losses = [r.val_loss for r in results.training if r.model == "small"]
    assert all(loss is not None and math.isfinite(loss) and loss > 0 for loss in small_losses)
    assert {(s.dtype, s.use_cache) for s in results.sampling} == {
        (dtype, use_cache) for dtype in ("float32", "bfloat16") for use_cache in (True, False)
    }
    assert all(s.tokens_per_second > 0 and s.bytes_per_cached_token > 0 for s in results.sampling)
    assert results.batching.samples == QUICK.sampling.batch_size
    assert results.batching.batch_tokens_per_second > 0
    assert results.batching.sequential_tokens_per_second > 0
    assert results.bandwidth.bytes_per_second > 0
    [decode] = results.decode
    assert decode.ours_tokens_per_second > 0
    if LLAMA_BENCH.is_file():  # `make llama-cpp` built it: it ran on our own GGUF
        assert decode.ratio is not None and decode.ratio > 0
        assert decode.llama_note.startswith("llama-bench -m medium-f32.gguf -p 0 -n 16 -t 1")
    else:
        assert decode.llama_note == LLAMA_BENCH_MISSING
    assert {p.kind for p in results.prepare} >= {"char"}
    assert all(p.megabytes_per_second > 0 and p.peak_rss_bytes > 0 for p in results.prepare)
    assert len(results.prepare_estimates) == len({p.kind for p in results.prepare})

    assert [(r.model, r.ratio > 0) for r in results.optimizer_ratios] == [
        ("small-llama", True),
        ("medium", True),
    ]
    # Time to quality: every setting, then the speed recipe (benchmarks/char_speedrun.toml
    # at the quick sizes), each evaluated at the same steps with a finite loss.
    assert [r.setting for r in results.quality] == [
        *(s.name for s in quality.SETTINGS),
        quality.SPEEDRUN,
    ]
    for r in results.quality:
        assert [step for step, _, _ in r.evals] == [3, 6]
        assert all(math.isfinite(val) and val > 0 for _, _, val in r.evals)
        assert r.seconds > 0

    table = report.render(results)
    lines = table.splitlines()
    header = lines[3]
    assert header.split() == list(report.HEADER)
    body = lines[5 : 5 + len(report.table_rows(results))]
    result_column = header.index("result")
    assert all(line[result_column - 2 : result_column] == "  " for line in body)  # aligned
    matmul = f"fp32 {QUICK.matmul_size}x{QUICK.matmul_size}"
    for case in (
        matmul,
        "medium bf16/fp32 speed",
        "medium-llama bf16/fp32 speed",
        "medium fp32 cached decode / ceiling",
        "medium fp32 cache/no-cache",
        "medium bf16 cache/no-cache",
        f"medium fp32 {QUICK.sampling.batch_size} samples batch/one by one",
        "medium fp32 batch 1, ours/llama.cpp",
        "GB/s",
        "1 GB (est.)",
        "muon/adamw step",
        f"to val {quality.TARGET:g}: {quality.SPEEDRUN}",
        f"{quality.SPEEDRUN} val within nanoGPT's",
    ):
        assert case in table
    # Quick sizes say nothing about the targets, so nothing is judged.
    assert "PASS" not in table and "FAIL" not in table

    out = tmp_path / "bench_out" / "bench.json"
    report.write_json(results, out)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert {check["verdict"] for check in written["checks"]} == {"n/a"}
    assert len(written["training"]) == 6
    assert len(written["time_to_quality"]) == len(quality.SETTINGS) + 1
    assert written["speedrun"]["best_within_wall"]["val"] > 0
    assert written["sampling_batch"]["speedup"] > 0
    assert written["decode"][0]["ours_tokens_per_second"] > 0


def test_without_llama_bench_the_decode_row_says_how_to_build_it(tmp_path: Path) -> None:
    spec = DecodeSpec("medium", QUICK.sampling.model, new_tokens=4, repeats=1)

    result = measure_decode(spec, tmp_path, llama_bench=tmp_path / "no-llama-bench")

    assert result.ours_tokens_per_second > 0
    assert result.ratio is None
    assert "make llama-cpp" in result.llama_note
    assert (tmp_path / "medium-f32.gguf").is_file()  # our GGUF is written either way


def test_the_speed_recipe_is_a_bundestag_char_config_of_nanogpts_shape_on_tiny_shakespeare() -> (
    None
):
    experiment = find_experiment(quality.SPEEDRUN_EXPERIMENT)
    config = load_config(quality.SPEEDRUN_CONFIG, experiment.directory).config

    model = config.train.model
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (4, 4, 128, 64)
    assert config.prepare.raw_text_path == TINY_SHAKESPEARE.resolve()
    assert config.prepare.tokenizer == "char" and config.prepare.train_split == 0.9
    assert config.train.runtime.eval_iters >= 20  # as nanoGPT's recipe evaluates
    # Plain keys a copy can change, and nothing lands inside the package.
    for path in (config.prepare.dataset_dir, config.train.runtime.out_dir):
        assert not path.is_relative_to(experiment.directory)
