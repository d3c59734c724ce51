"""`ml-playground export` as a user runs it, on a GPT with GPT-2's full BPE vocabulary.

The exported file is judged by tools we did not write: gguf's GGUFReader reads its keys
and shapes back, and transformers loads it and must compute our model's logits and greedy
continuation. Errors are one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import gguf
import pytest
import torch

from ml_playground.config import SampleSettings
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.sample.generate import generate
from ml_playground.sample.gpt import gpt_step
from tests.cli_helpers import assert_one_error_line
from tests.export_helpers import gpt2_encoding, random_gpt, save_checkpoint, write_experiment

PROMPT = "ROMEO: But soft, what light through yonder window breaks?"
SMALL = GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=64)
GPT2 = TokenizerSpec(kind="tiktoken", encoding="gpt2")


def cli(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def trained(folder: Path, model: GPT, spec: TokenizerSpec = GPT2, **export: str | bool) -> Path:
    write_experiment(folder, {"enabled": True, "quant": "f16", **export})
    save_checkpoint(folder / "out", model, spec)
    return folder


def test_export_writes_a_gguf_transformers_runs_like_our_model(tmp_path: Path) -> None:
    model = random_gpt(SMALL)
    folder = trained(tmp_path / "shakespeare", model)

    result = cli(tmp_path, "export", folder)

    assert result.returncode == 0, result.stderr
    export_dir = folder / "export"
    gguf_path = export_dir / "model.gguf"
    for name in ("Modelfile", "README.md", "SHA256SUMS"):
        assert (export_dir / name).is_file()
    assert f"exported {gguf_path}" in result.stdout

    reader = gguf.GGUFReader(gguf_path)
    field = reader.get_field("tokenizer.ggml.tokens")
    assert field is not None
    assert len(field.data) == 50257
    merges = reader.get_field("tokenizer.ggml.merges")
    assert merges is not None
    assert len(merges.data) == 50000
    shapes = {tensor.name: tuple(int(n) for n in tensor.data.shape) for tensor in reader.tensors}
    assert shapes["token_embd.weight"] == (50257, 64)  # the model's 50304 padded rows, cut
    assert shapes["position_embd.weight"] == (64, 64)

    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - slow import, one test

    # n_positions: transformers maps gpt2.context_length to `n_ctx`, which GPT2Config ignores.
    theirs: torch.nn.Module = AutoModelForCausalLM.from_pretrained(  # pyright: ignore[reportUnknownMemberType] - untyped
        str(export_dir), gguf_file=gguf_path.name, dtype=torch.float32, n_positions=64
    )
    theirs.eval()
    ids = gpt2_encoding().encode_ordinary(PROMPT)
    with torch.no_grad():
        our_logits = model(torch.tensor([ids]))[0, :, :50257]
        their_logits = cast(torch.Tensor, theirs(torch.tensor([ids])).logits)[0]
        difference = (our_logits - their_logits).abs().max().item()
        print(f"f16, GPT-2 vocabulary: max |logit difference| = {difference:.3g}")
        assert difference < 1e-2

        [ours] = generate(gpt_step(model), ids, SampleSettings(temperature=0.0, max_new_tokens=8))
        context = list(ids)
        for _ in range(8):
            logits = cast(torch.Tensor, theirs(torch.tensor([context])).logits)
            context.append(int(logits[0, -1].argmax()))
    assert context[len(ids) :] == ours.ids

    again = cli(tmp_path, "convert", folder)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout


def test_export_disabled_is_one_error_line(tmp_path: Path) -> None:
    folder = trained(tmp_path / "exp", random_gpt(SMALL), enabled=False)

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "enabled = true" in line
    assert not (folder / "export").exists()


def test_export_without_checkpoint_is_one_error_line(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    write_experiment(folder, {"enabled": True})

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "no checkpoint" in line
    assert not (folder / "export").exists()


def test_export_of_a_character_level_model_is_one_error_line(tmp_path: Path) -> None:
    chars = TokenizerSpec(kind="char", vocab=tuple(" abcdefgh"))
    tiny = GPTConfig(vocab_size=9, block_size=8, n_layer=1, n_head=1, n_embd=8)
    folder = trained(tmp_path / "exp", random_gpt(tiny), spec=chars)

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "character-level" in line
    assert not (folder / "export").exists()


def test_export_of_a_fine_tuned_model_names_the_placeholder_converter(tmp_path: Path) -> None:
    folder = tmp_path / "speakger"
    adapters = folder / "out" / "adapters" / "best"
    adapters.mkdir(parents=True)
    (adapters / "adapter_config.json").write_text("{}", encoding="utf-8")
    (folder / "out" / "tokenizer").mkdir()
    (tmp_path / "base").mkdir()
    (folder / "config.toml").write_text(
        f'[train.hf_model]\nmodel_name = "{tmp_path / "base"}"\n'
        '[train.runtime]\nout_dir = "out"\n'
        "[export.ollama]\nenabled = true\n",
        encoding="utf-8",
    )

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "convert-hf-to-gguf.py is only a placeholder" in line
    assert "convert_bin" in line
    assert not (folder / "export").exists()


@pytest.fixture(autouse=True)
def _offline() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
