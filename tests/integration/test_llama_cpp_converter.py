"""`ml-playground export` of a LoRA fine-tune through llama.cpp's real converters.

The converters are the ones `make llama-cpp-converters` puts into tools/llama_cpp/ (CI runs
it); without them these tests fail, saying so, instead of skipping. The last test also
needs llama.cpp's binaries, which only `make llama-cpp` builds (minutes of cmake, not in
CI); without them it is skipped, saying so. The fine-tune is a
tiny Llama on GPT-2's byte-level BPE, whose pre-tokenizer llama.cpp's converter
recognises, with LoRA adapters on q_proj and v_proj. The files are judged by readers we
did not write: transformers' GGUF loader must compute the merged model's logits, and
gguf's GGUFReader must find the adapter's own matrices in the LoRA GGUF.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file  # pyright: ignore[reportUnknownVariableType] - PathLike[Unknown] in its signature

from ml_playground.checkpoint import seal_adapters
from ml_playground.config import PeftConfig
from ml_playground.data.speeches.dataset import speech_record_format
from ml_playground.finetune.hub import ModelSource, load_causal_lm, load_tokenizer
from ml_playground.finetune.model import apply_lora, load_adapters, merge_adapters, save_weights
from ml_playground.run_folder import HFRunMeta, write_run_meta
from tests.experiments import lora_run
from tests.export_helpers import gpt2_encoding
from tests.finetune_helpers import ADAPTER_FILE
from tests.llama_cpp_helpers import (
    N_HEAD,
    TOOLS,
    build_gpt2_llama,
    export_cli,
    llama_binaries,
    llama_completion,
    require_converters,
)

LORA_R, LORA_ALPHA = 4, 8
PROMPT = "Sprecher: Erika Muster\n\nFrau Präsidentin! 3.14"


@pytest.fixture(scope="module", autouse=True)
def _converters() -> None:
    require_converters()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt2_llama(tmp_path_factory.mktemp("hub") / "tiny-llama-gpt2")


def fine_tuned(folder: Path, base: Path) -> Path:
    """The out/ of a LoRA run, as the trainer writes it: tokenizer, adapters/best, meta.json."""
    out = folder / "out"
    load_tokenizer(ModelSource.local(base)).save_pretrained(str(out / "tokenizer"))
    model = load_causal_lm(ModelSource.local(base), dtype=torch.float32, attn_implementation=None)
    lora = PeftConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["q_proj", "v_proj"])
    torch.default_generator.manual_seed(1)  # LoRA's A is drawn at random too
    wrapped = apply_lora(model, lora, str(base), [])
    with torch.no_grad():  # as if trained: LoRA's B starts at zero, which merges to nothing
        for param in wrapped.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn_like(param))
    save_weights(wrapped, out / "adapters" / "best")
    seal_adapters(out / "adapters" / "best")
    records = speech_record_format(structure_tokens=False, added_tokens=())
    write_run_meta(
        out,
        HFRunMeta(
            **records.record_format(),
            base_model=str(base),
            revision=None,
            vocab_size=model.config.vocab_size,
            lora=True,
        ),
    )
    return out


def experiment(folder: Path, base: Path, **export: str | bool) -> Path:
    lora_run(folder, base, {"export.ollama": {"enabled": True, "quant": "f32", **export}})
    return folder


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return cast(torch.Tensor, model(torch.tensor([ids])).logits)[0]


def test_a_merged_lora_export_computes_what_the_merged_model_does(
    tmp_path: Path, base_model: Path
) -> None:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - heavy

    folder = experiment(tmp_path / "run", base_model)
    out = fine_tuned(folder, base_model)

    result = export_cli(tmp_path, folder)

    # The converter's progress reaches the terminal while it runs; stdout stays ours.
    assert "INFO:hf-to-gguf:Model successfully exported" in result.stderr
    assert "hf-to-gguf" not in result.stdout
    export_dir = folder / "export"
    reader = gguf.GGUFReader(export_dir / "model.gguf")
    assert bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"
    theirs = AutoModelForCausalLM.from_pretrained(str(export_dir), gguf_file="model.gguf")  # pyright: ignore[reportUnknownMemberType] - untyped library
    base = load_causal_lm(
        ModelSource.local(base_model), dtype=torch.float32, attn_implementation=None
    )
    ours = merge_adapters(load_adapters(base, out / "adapters" / "best", trainable=False))
    ids = gpt2_encoding().encode_ordinary(PROMPT)
    expected = logits(ours, ids)
    unmerged = load_causal_lm(
        ModelSource.local(base_model), dtype=torch.float32, attn_implementation=None
    )
    assert (logits(unmerged, ids) - expected).abs().max().item() > 1e-2  # the adapters matter
    assert (logits(theirs, ids) - expected).abs().max().item() < 1e-4


def rope_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's order of a q/k projection's output rows: within each head, the rotary
    halves interleaved (HF rotates halves, llama.cpp adjacent pairs)."""
    rows, *rest = weight.shape
    grouped = weight.reshape(n_head, 2, rows // n_head // 2, *rest)
    return grouped.swapaxes(1, 2).reshape(weight.shape)


def test_an_adapter_only_export_holds_the_adapters_matrices(
    tmp_path: Path, base_model: Path
) -> None:
    folder = experiment(tmp_path / "run", base_model, adapter_only=True)
    out = fine_tuned(folder, base_model)

    export_cli(tmp_path, folder)

    export_dir = folder / "export"
    modelfile = (export_dir / "Modelfile").read_text(encoding="utf-8").splitlines()
    assert modelfile[:2] == ["FROM ./base.gguf", "ADAPTER ./adapter.gguf"]
    reader = gguf.GGUFReader(export_dir / "adapter.gguf")
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "adapter"
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == LORA_ALPHA
    written = {tensor.name: np.asarray(tensor.data) for tensor in reader.tensors}
    saved = load_file(str(out / "adapters" / "best" / ADAPTER_FILE))
    assert len(written) == len(saved) == 2 * 2 * 2  # layers x (q, v) x (A, B)
    for layer in range(2):
        for proj, gguf_name in (("q_proj", "attn_q"), ("v_proj", "attn_v")):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            a = saved[f"{prefix}.lora_A.weight"].numpy()  # (r, in), as ggml's (in, r) reads
            b = saved[f"{prefix}.lora_B.weight"].numpy()  # (out, r)
            if proj == "q_proj":
                b = rope_rows(b, N_HEAD)
            np.testing.assert_array_equal(written[f"blk.{layer}.{gguf_name}.weight.lora_a"], a)
            np.testing.assert_array_equal(written[f"blk.{layer}.{gguf_name}.weight.lora_b"], b)
    base = gguf.GGUFReader(export_dir / "base.gguf")
    assert {tensor.name for tensor in base.tensors} >= {"token_embd.weight", "output.weight"}


def greedy_text(model: torch.nn.Module, ids: list[int], steps: int) -> str:
    sequence = list(ids)
    for _ in range(steps):
        sequence.append(int(logits(model, sequence)[-1].argmax()))
    return gpt2_encoding().decode(sequence[len(ids) :])


def test_llama_cpp_runs_the_exports_greedy_like_the_merged_model_and_quantizes_them(
    tmp_path: Path, base_model: Path
) -> None:
    if not all(path.is_file() for path in llama_binaries()):
        pytest.skip(f"llama.cpp's binaries are not built in {TOOLS / 'bin'}: run `make llama-cpp`")
    f32 = experiment(tmp_path / "f32", base_model)
    out = fine_tuned(f32, base_model)
    q4 = experiment(tmp_path / "q4", base_model, quant="q4_k_m")  # no quant_bin: bin/ is found
    fine_tuned(q4, base_model)

    export_cli(tmp_path, f32)
    quantized = export_cli(tmp_path, q4)

    assert "llama_model_quantize_impl: quant size" in quantized.stderr
    reader = gguf.GGUFReader(q4 / "export" / "model.gguf")
    file_type = int(reader.fields["general.file_type"].parts[-1][0])
    assert file_type == gguf.LlamaFileType.MOSTLY_Q4_K_M
    base = load_causal_lm(
        ModelSource.local(base_model), dtype=torch.float32, attn_implementation=None
    )
    ours = merge_adapters(load_adapters(base, out / "adapters" / "best", trainable=False))
    ids = gpt2_encoding().encode_ordinary(PROMPT)
    expected = greedy_text(ours, ids, steps=6).rstrip("\n")
    assert llama_completion(f32 / "export" / "model.gguf", PROMPT, steps=6) == expected
    # Four bits per weight move the logits of a random model too far to compare tokens.
    assert llama_completion(q4 / "export" / "model.gguf", PROMPT, steps=6)
