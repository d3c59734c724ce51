"""The fine-tuned route: merge LoRA adapters into a tiny Qwen2, then llama.cpp's tools.

llama.cpp's converters and llama-quantize are stand-ins here (no llama.cpp in CI): small
scripts that record their arguments and what the Hugging Face folder they were given
holds, keep a copy of its weights, and write a file where the real tool would. The merge
itself is real (peft on a real tiny model) and is checked against W + (alpha / r) B A
computed from the adapter file by hand.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from safetensors.torch import load_file  # pyright: ignore[reportUnknownVariableType] - PathLike[Unknown] in its signature

from ml_playground.backends import backend_for
from ml_playground.checkpoint import seal_adapters
from ml_playground.config import ExperimentConfig, PeftConfig
from ml_playground.config_loader import load_config
from ml_playground.data.speeches.dataset import speech_record_format
from ml_playground.data.speeches.speech import SPEECH_END, SPEECH_START
from ml_playground.errors import ExportError
from ml_playground.export import export_experiment, llama_cpp
from ml_playground.export.bundle import CHECKSUMS, STAMP
from ml_playground.finetune.hub import ModelSource, load_causal_lm, load_tokenizer
from ml_playground.finetune.model import apply_lora, fit_embeddings, save_weights
from ml_playground.run_folder import HFRunMeta, write_run_meta
from ml_playground.sample.hf import load_trained
from ml_playground.train.hf import train_lora
from tests.experiments import load, lora_run, lora_settings, prepare_speech_records
from tests.finetune_helpers import (
    build_tiny_model,
    copy_member_slices,
    speeches,
    write_speeches_csv,
)
from tests.toml_helpers import Settings

LORA_R, LORA_ALPHA = 4, 8
LAYER = "model.layers.0.self_attn.q_proj"

# A stand-in for a llama.cpp converter: records argv and the folder it converts, keeps a
# copy of that Hugging Face folder, writes a file that starts like a GGUF.
FAKE_CONVERTER = """\
#!{python}
import json, os, shutil, sys
log_dir = {log_dir!r}
args = sys.argv[1:]
source = args[0]
listing = sorted(os.listdir(source)) if os.path.isdir(source) else []
with open(os.path.join(log_dir, {name!r} + ".log"), "a") as log:
    log.write(json.dumps({{"args": args, "listing": listing}}) + "\\n")
if os.path.isdir(source):
    shutil.copytree(source, os.path.join(log_dir, {name!r} + "_hf"))
with open(args[args.index("--outfile") + 1], "wb") as out:
    out.write(b"GGUF" + {name!r}.encode())
"""

FAKE_QUANTIZE = """\
#!{python}
import json, os, shutil, sys
with open(os.path.join({log_dir!r}, "quantize.log"), "a") as log:
    log.write(json.dumps({{"args": sys.argv[1:]}}) + "\\n")
shutil.copyfile(sys.argv[1], sys.argv[2])
"""

FAILING_CONVERTER = """\
import sys
print("INFO:hf-to-gguf:Loading model", file=sys.stderr)
print("NotImplementedError: Architecture 'Qwen2ForCausalLM' not supported!", file=sys.stderr)
sys.exit(1)
"""


def tool(path: Path, template: str, log_dir: Path, name: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = template.format(python=sys.executable, log_dir=str(log_dir), name=name)
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def calls(log_dir: Path, name: str) -> list[dict[str, Any]]:
    log = log_dir / f"{name}.log"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("hub") / "tiny-qwen2", "qwen2")


def fine_tuned(folder: Path, base: Path, *, structure_tokens: bool = True) -> Path:
    """out/ of a LoRA run, built the way the trainer does; it may add structure tokens."""
    out = folder / "out"
    added = (SPEECH_START, SPEECH_END) if structure_tokens else ()
    tokenizer = load_tokenizer(ModelSource.local(base))
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": list(added)})
    tokenizer.save_pretrained(str(out / "tokenizer"))
    model = load_causal_lm(ModelSource.local(base), dtype=torch.float32, attn_implementation=None)
    fit_embeddings(model, len(tokenizer), init_new_rows=True)
    new_ids = tokenizer.convert_tokens_to_ids(list(added)) if added else []
    lora = PeftConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=["q_proj", "v_proj"])
    wrapped = apply_lora(model, lora, str(base), new_ids)
    torch.default_generator.manual_seed(0)
    with torch.no_grad():  # as if trained: LoRA's B starts at zero, which merges to nothing
        for param in wrapped.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    save_weights(wrapped, out / "adapters" / "best")
    seal_adapters(out / "adapters" / "best")
    records = speech_record_format(structure_tokens=structure_tokens, added_tokens=added)
    write_run_meta(
        out,
        HFRunMeta(
            **records.record_format(),
            base_model=str(base),
            revision=None,
            vocab_size=len(tokenizer),
            lora=True,
        ),
    )
    return out


def experiment(folder: Path, base: Path, **export: str | bool) -> ExperimentConfig:
    convert_bin = str(folder.parent / "tools" / "convert_hf_to_gguf.py")
    settings: Settings = {
        "sample.sample": {"start": "Sprecher: Erika Muster", "temperature": 0.7},
        "export.ollama": {"enabled": True, "quant": "f16", "convert_bin": convert_bin, **export},
    }
    return load_config(lora_run(folder, base, settings), folder).config


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """Stand-ins for llama.cpp's converter, LoRA converter and llama-quantize."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    folder = tmp_path / "tools"
    tool(folder / "convert_hf_to_gguf.py", FAKE_CONVERTER, log_dir, "convert")
    tool(folder / "convert_lora_to_gguf.py", FAKE_CONVERTER, log_dir, "convert_lora")
    tool(folder / "llama-quantize", FAKE_QUANTIZE, log_dir)
    return log_dir


def test_merged_export_merges_converts_and_quantizes(
    tmp_path: Path, base_model: Path, tools: Path
) -> None:
    folder = tmp_path / "speakger"
    out = fine_tuned(folder, base_model)
    config = experiment(
        folder, base_model, quant="q4_k_m", quant_bin=str(tmp_path / "tools" / "llama-quantize")
    )

    export_experiment(config, backend_for(config), "speakger")

    [convert] = calls(tools, "convert")
    merged_dir, *options = convert["args"]
    assert options[0] == "--outfile"
    assert Path(options[1]).name == "model-f16.gguf"
    assert options[2:] == ["--outtype", "f16"]
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(convert["listing"])
    [quantize] = calls(tools, "quantize")
    assert Path(quantize["args"][0]).name == "model-f16.gguf"
    assert Path(quantize["args"][1]).name == "model.gguf"
    assert quantize["args"][2] == "Q4_K_M"
    assert Path(merged_dir).name == "merged"
    assert not Path(merged_dir).exists()  # the work folder is not kept

    export_dir = folder / "export"
    assert sorted(path.name for path in export_dir.iterdir()) == sorted(
        ["model.gguf", "Modelfile", "README.md", CHECKSUMS, STAMP]
    )
    assert (export_dir / "Modelfile").read_text(encoding="utf-8") == (
        "FROM ./model.gguf\n"
        f'TEMPLATE """{SPEECH_START}\n{{{{ .Prompt }}}}\n\n"""\n'
        f'PARAMETER stop "{SPEECH_END}"\n'
        'PARAMETER stop "<|endoftext|>"\n'
        "PARAMETER temperature 0.7\n"
        "PARAMETER top_k 200\n"
        "PARAMETER top_p 1\n"
    )
    readme = (export_dir / "README.md").read_text(encoding="utf-8")
    assert "ollama create speakger -f Modelfile" in readme
    assert "Prompt format: header records." in readme

    assert_merged_weights(
        tools / "convert_hf" / "model.safetensors", base_model, out / "adapters" / "best"
    )


def assert_merged_weights(merged_file: Path, base: Path, adapters: Path) -> None:
    """W + (alpha / r) B A from the files; embeddings grown by the two structure tokens."""
    merged = load_file(str(merged_file))
    original = load_file(str(base / "model.safetensors"))
    lora = load_file(str(adapters / "adapter_model.safetensors"))
    a = lora[f"base_model.model.{LAYER}.lora_A.weight"]
    b = lora[f"base_model.model.{LAYER}.lora_B.weight"]
    expected = original[f"{LAYER}.weight"] + (LORA_ALPHA / LORA_R) * (b @ a)
    assert torch.allclose(merged[f"{LAYER}.weight"], expected, atol=1e-6)
    assert not torch.allclose(merged[f"{LAYER}.weight"], original[f"{LAYER}.weight"])
    embeddings = merged["model.embed_tokens.weight"]
    vocab = original["model.embed_tokens.weight"].shape[0]
    assert embeddings.shape[0] == vocab + 2
    assert torch.equal(embeddings[:vocab], original["model.embed_tokens.weight"])
    [rows] = [value for key, value in lora.items() if "trainable_tokens" in key]
    assert torch.allclose(embeddings[vocab:], rows)  # the trained rows of the new tokens
    assert not any(".lora_" in key or "trainable_tokens" in key for key in merged)


def test_a_real_fine_tuning_run_exports_a_model_that_computes_what_sampling_does(
    tmp_path: Path, base_model: Path, tools: Path
) -> None:
    """prepare -> train_lora -> export; the merged folder runs like base + adapters."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - heavy, these tests only

    folder = tmp_path / "run"
    write_speeches_csv(folder / "raw" / "Bundestag.csv", speeches(16))
    copy_member_slices(folder / "raw")
    settings = lora_settings(base_model) | {
        "prepare.raw_dir": "raw",
        "export.ollama.enabled": True,
        "export.ollama.convert_bin": str(tmp_path / "tools" / "convert_hf_to_gguf.py"),
    }
    loaded = load(folder, settings)
    prepare_speech_records(loaded.config, frozenset({".csv"}))
    train_lora(loaded.config)

    export_experiment(loaded.config, backend_for(loaded.config), "run")

    hf = loaded.config.train.hf_model
    assert hf is not None
    trained = load_trained(
        loaded.config.train.runtime.out_dir, hf, dtype=torch.float32, require_adapters=True
    )
    merged: torch.nn.Module = AutoModelForCausalLM.from_pretrained(str(tools / "convert_hf"))  # pyright: ignore[reportUnknownMemberType] - untyped
    merged.eval()
    ids = torch.tensor([trained.tokenizer.encode(f"{SPEECH_START}Sprecher: Erika Muster\n\n")])
    with torch.no_grad():
        expected = cast(torch.Tensor, trained.model(ids).logits)
        actual = cast(torch.Tensor, merged(ids).logits)
    assert (expected - actual).abs().max().item() < 1e-4
    modelfile = (folder / "export" / "Modelfile").read_text(encoding="utf-8")
    assert f'PARAMETER stop "{SPEECH_END}"' in modelfile


def test_adapter_only_export_writes_base_and_adapter_with_an_adapter_line(
    tmp_path: Path, base_model: Path, tools: Path
) -> None:
    folder = tmp_path / "speakger"
    out = fine_tuned(folder, base_model, structure_tokens=False)
    config = experiment(folder, base_model, adapter_only=True)

    export_experiment(config, backend_for(config), "speakger")

    [convert] = calls(tools, "convert")
    base_dir, *options = convert["args"]
    assert Path(base_dir).name == "base"
    assert Path(options[1]).name == "base.gguf"
    assert [options[0], *options[2:]] == ["--outfile", "--outtype", "f16"]
    [lora] = calls(tools, "convert_lora")
    adapters, *options = lora["args"]
    assert adapters == str(out / "adapters" / "best")
    assert options[:2] == ["--base", base_dir]
    assert Path(options[3]).name == "adapter.gguf"
    assert [options[2], *options[4:]] == ["--outfile", "--outtype", "f16"]
    modelfile = (folder / "export" / "Modelfile").read_text(encoding="utf-8").splitlines()
    assert modelfile[:3] == [
        "FROM ./base.gguf",
        "ADAPTER ./adapter.gguf",
        'TEMPLATE """{{ .Prompt }}',  # speech records without structure tokens
    ]
    unmerged = load_file(str(tools / "convert_hf" / "model.safetensors"))
    original = load_file(str(base_model / "model.safetensors"))
    assert torch.equal(unmerged[f"{LAYER}.weight"], original[f"{LAYER}.weight"])
    assert unmerged["model.embed_tokens.weight"].shape[0] == len(
        load_tokenizer(ModelSource.local(out / "tokenizer"))
    )


def test_a_run_without_lora_exports_its_whole_fine_tuned_model(
    tmp_path: Path, base_model: Path, tools: Path
) -> None:
    folder = tmp_path / "full"
    best = folder / "out" / "adapters" / "best"  # [train.peft] enabled = false saves models
    best.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (best / name).write_bytes((base_model / name).read_bytes())
    (best / "training_state.pt").write_bytes(b"optimizer state")
    seal_adapters(best)
    tokenizer = load_tokenizer(ModelSource.local(base_model))
    tokenizer.save_pretrained(str(folder / "out" / "tokenizer"))
    config = experiment(folder, base_model)

    export_experiment(config, backend_for(config), "full")

    [convert] = calls(tools, "convert")
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(convert["listing"])
    assert "training_state.pt" not in convert["listing"]
    converted = load_file(str(tools / "convert_hf" / "model.safetensors"))
    assert torch.equal(
        converted[f"{LAYER}.weight"], load_file(str(best / "model.safetensors"))[f"{LAYER}.weight"]
    )


def test_adapter_only_refuses_adapters_with_trained_rows_of_added_tokens(
    tmp_path: Path, base_model: Path, tools: Path
) -> None:
    folder = tmp_path / "speakger"
    fine_tuned(folder, base_model)  # adds the structure tokens
    config = experiment(folder, base_model, adapter_only=True)

    with pytest.raises(ExportError, match="adapter_only = false to export the merged model"):
        export_experiment(config, backend_for(config), "speakger")

    assert calls(tools, "convert") == []
    assert not (folder / "export").exists()


def test_an_unchanged_rerun_is_skipped_without_merging_again(
    tmp_path: Path, base_model: Path, tools: Path
) -> None:
    folder = tmp_path / "speakger"
    fine_tuned(folder, base_model)
    config = experiment(folder, base_model)

    assert not export_experiment(config, backend_for(config), "speakger").skipped
    assert export_experiment(config, backend_for(config), "speakger").skipped

    assert len(calls(tools, "convert")) == 1


def test_without_the_converter_the_error_says_to_run_make(
    tmp_path: Path, base_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(llama_cpp, "REPO_ROOT", tmp_path / "repo")  # nothing fetched there
    folder = tmp_path / "speakger"
    fine_tuned(folder, base_model)
    config = experiment(folder, base_model)
    unset = config.model_copy(
        update={
            "export": config.export.model_copy(
                update={"ollama": config.export.ollama.model_copy(update={"convert_bin": None})}
            )
        }
    )

    with pytest.raises(ExportError, match="run `make llama-cpp-converters`") as error:
        export_experiment(unset, backend_for(unset), "speakger")

    assert "\n" not in str(error.value)
    assert not (folder / "export").exists()


def test_a_failing_converter_shows_the_tail_of_its_stderr(tmp_path: Path, base_model: Path) -> None:
    folder = tmp_path / "speakger"
    fine_tuned(folder, base_model)
    failing = tmp_path / "failing" / "convert_hf_to_gguf.py"
    failing.parent.mkdir()
    failing.write_text(FAILING_CONVERTER, encoding="utf-8")
    config = experiment(folder, base_model, convert_bin=str(failing))

    with pytest.raises(ExportError) as error:
        export_experiment(config, backend_for(config), "speakger")

    message = str(error.value)
    assert "llama.cpp converter failed with exit code 1" in message
    assert "Architecture 'Qwen2ForCausalLM' not supported" in message
    assert not (folder / "export").exists()
    assert [path.name for path in folder.iterdir() if path.name.startswith(".")] == []


def test_no_adapters_is_refused(tmp_path: Path, base_model: Path, tools: Path) -> None:
    del tools
    folder = tmp_path / "speakger"
    config = experiment(folder, base_model)

    with pytest.raises(ExportError, match=r"no LoRA adapters to export .*adapters/best"):
        export_experiment(config, backend_for(config), "speakger")


@pytest.fixture(autouse=True)
def _cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
