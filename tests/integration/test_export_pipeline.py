"""`export_experiment` on real checkpoints: the bundle, re-runs, llama-quantize, ollama, errors.

llama-quantize and ollama are stand-ins: small scripts that record their arguments and
write what the real tool would, so the tests see exactly how they are called.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from ml_playground import run_folder
from ml_playground.backends import backend_for
from ml_playground.config import ExperimentConfig
from ml_playground.config_loader import load_config
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.errors import CheckpointError, ExportError
from ml_playground.export import export_experiment
from ml_playground.export.bundle import CHECKSUMS, STAMP
from ml_playground.model.config import GPTConfig
from tests.experiments import export_config
from tests.export_helpers import random_gpt, save_checkpoint
from tests.toml_helpers import TomlValue

GPT2_SPEC = TokenizerSpec(kind="tiktoken", encoding="gpt2")
TINY = GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=32)

FAKE_QUANTIZE = """\
#!{python}
import json, shutil, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
shutil.copyfile(sys.argv[1], sys.argv[2])
"""

FAKE_OLLAMA = """\
#!{python}
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""

FAILING_TOOL = """\
#!{python}
import sys
print("loading model", file=sys.stderr)
print("error: unknown model architecture", file=sys.stderr)
sys.exit(1)
"""


def fake_tool(path: Path, template: str, log: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(template.format(python=sys.executable, log=str(log)), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def recorded(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def experiment(
    folder: Path,
    export: Mapping[str, TomlValue] | None = None,
    spec: TokenizerSpec = GPT2_SPEC,
    model: GPTConfig = TINY,
) -> ExperimentConfig:
    """A trained-looking experiment in `folder` with [export.ollama] enabled."""
    config_path = export_config(folder, {"enabled": True, "quant": "f16", **(export or {})})
    save_checkpoint(folder / "out", random_gpt(model), spec)
    return load_config(config_path, folder).config


def test_export_writes_gguf_modelfile_readme_checksums_and_stamp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = experiment(tmp_path / "shake", {"model_name": "shake-tiny", "stop": ["\n\n"]})

    result = export_experiment(config, backend_for(config), "shake")

    export_dir = tmp_path / "shake" / "export"
    assert result.export_dir == export_dir
    assert not result.skipped
    assert sorted(path.name for path in export_dir.iterdir()) == sorted(
        ["model.gguf", "Modelfile", "README.md", CHECKSUMS, STAMP]
    )
    assert (export_dir / "model.gguf").read_bytes()[:4] == b"GGUF"
    assert (export_dir / "Modelfile").read_text(encoding="utf-8") == (
        "FROM ./model.gguf\n"
        'TEMPLATE "{{ .Prompt }}"\n'
        'PARAMETER stop "<|endoftext|>"\n'
        'PARAMETER stop """\n\n"""\n'
        "PARAMETER temperature 0.7\n"
        "PARAMETER top_k 40\n"
        "PARAMETER top_p 0.9\n"
        "PARAMETER num_ctx 32\n"
    )
    readme = (export_dir / "README.md").read_text(encoding="utf-8")
    assert "ollama create shake-tiny -f Modelfile" in readme
    assert 'ollama run shake-tiny "ROMEO:"' in readme
    assert "llama-cli -m model.gguf" in readme
    checksums = (export_dir / CHECKSUMS).read_text(encoding="utf-8")
    assert {line.split("  ")[1] for line in checksums.splitlines()} == {
        "model.gguf",
        "Modelfile",
        "README.md",
    }
    assert "ollama create shake-tiny" in capsys.readouterr().out


def test_a_rerun_with_unchanged_inputs_is_skipped_and_a_change_re_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exp"
    config = experiment(folder)
    export_experiment(config, backend_for(config), "exp")
    gguf = folder / "export" / "model.gguf"
    first_write = gguf.stat().st_mtime_ns

    again = export_experiment(config, backend_for(config), "exp")

    assert again.skipped
    assert gguf.stat().st_mtime_ns == first_write
    assert "up to date" in capsys.readouterr().out

    save_checkpoint(folder / "out", random_gpt(TINY, seed=1), GPT2_SPEC)  # trained further
    assert not export_experiment(config, backend_for(config), "exp").skipped
    changed = load_config(export_config(folder, {"enabled": True, "quant": "q8_0"}), folder)
    assert not export_experiment(changed.config, backend_for(changed.config), "exp").skipped


def test_checkpoint_last_is_exported_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    config = experiment(folder, {"checkpoint": "last"})
    with pytest.raises(ExportError, match=r"no checkpoint .*ckpt_last\.pt"):
        export_experiment(config, backend_for(config), "exp")

    save_checkpoint(folder / "out", random_gpt(TINY), GPT2_SPEC, name=run_folder.LAST_FILE)
    export_experiment(config, backend_for(config), "exp")

    stamp = json.loads((folder / "export" / STAMP).read_text(encoding="utf-8"))
    assert stamp["inputs"]["checkpoint"]["file"] == run_folder.LAST_FILE


def test_quant_beyond_q8_0_goes_through_quant_bin(tmp_path: Path) -> None:
    log = tmp_path / "quantize.log"
    quantize = fake_tool(tmp_path / "bin" / "llama-quantize", FAKE_QUANTIZE, log)
    config = experiment(tmp_path / "exp", {"quant": "q4_k_m", "quant_bin": str(quantize)})

    export_experiment(config, backend_for(config), "exp")

    [call] = recorded(log)
    source, target, kind = call
    assert Path(source).name == "model-f32.gguf"
    assert Path(target).name == "model.gguf"
    assert kind == "Q4_K_M"
    export_dir = tmp_path / "exp" / "export"
    assert not (export_dir / "model-f32.gguf").exists()  # the intermediate is gone
    assert (export_dir / "model.gguf").read_bytes()[:4] == b"GGUF"


def test_a_failing_quantizer_is_one_line_with_its_stderr_and_writes_nothing(
    tmp_path: Path,
) -> None:
    quantize = fake_tool(tmp_path / "bin" / "llama-quantize", FAILING_TOOL)
    config = experiment(tmp_path / "exp", {"quant": "q5_k_m", "quant_bin": str(quantize)})

    with pytest.raises(ExportError) as error:
        export_experiment(config, backend_for(config), "exp")

    message = str(error.value)
    assert "llama-quantize failed with exit code 1" in message
    assert "unknown model architecture" in message
    assert "\n" not in message
    assert sorted(path.name for path in (tmp_path / "exp").iterdir()) == ["config.toml", "out"]


def test_ollama_create_runs_when_ollama_is_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "ollama.log"
    fake_tool(tmp_path / "bin" / "ollama", FAKE_OLLAMA, log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    config = experiment(tmp_path / "exp", {"create": True, "model_name": "tiny:v1"})

    result = export_experiment(config, backend_for(config), "exp")

    assert result.created
    assert recorded(log) == [
        ["create", "tiny:v1", "-f", str(tmp_path / "exp" / "export" / "Modelfile")]
    ]


def test_create_without_ollama_on_path_still_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    config = experiment(tmp_path / "exp", {"create": True})

    result = export_experiment(
        config, backend_for(config)
    )  # the name defaults to the experiment's folder

    assert not result.created
    assert result.model_name == "exp"
    assert (tmp_path / "exp" / "export" / "model.gguf").is_file()
    assert "ollama is not on PATH" in capsys.readouterr().out


# --- refusals: one line, and no export folder -------------------------------------------


def assert_refused(folder: Path, config: ExperimentConfig, match: str) -> str:
    with pytest.raises(ExportError, match=match) as error:
        export_experiment(config, backend_for(config), folder.name)
    assert "\n" not in str(error.value)
    assert not (folder / "export").exists()
    return str(error.value)


def test_export_disabled_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    config = experiment(folder, {"enabled": False})

    assert_refused(folder, config, r"export is disabled .* enabled = true under \[export.ollama\]")


def test_no_checkpoint_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    config = load_config(export_config(folder, {"enabled": True}), folder).config

    with pytest.raises(CheckpointError, match=r"no checkpoint in .*train first"):
        export_experiment(config, backend_for(config), "exp")
    assert not (folder / "export").exists()


def test_a_character_level_model_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    chars = TokenizerSpec(kind="char", vocab=tuple("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh"))
    model = GPTConfig(
        vocab_size=len(chars.vocab or ()), block_size=16, n_layer=1, n_head=1, n_embd=8
    )
    config = experiment(folder, spec=chars, model=model)

    message = assert_refused(folder, config, "character-level model")
    assert 'tokenizer = "tiktoken"' in message


def test_a_tiktoken_encoding_with_another_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    config = experiment(folder, spec=TokenizerSpec(kind="tiktoken", encoding="cl100k_base"))

    assert_refused(folder, config, "cl100k_base.*another pre-tokenizer")


def test_an_unwritable_export_dir_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    config = experiment(folder, {"export_dir": str(tmp_path / "a-file" / "export")})

    with pytest.raises(ExportError, match="cannot write export_dir"):
        export_experiment(config, backend_for(config), "exp")


def test_an_unknown_quant_is_refused_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    config = experiment(folder, {"quant": "q3"})

    assert_refused(folder, config, "unknown .* quant 'q3'")


def test_a_template_under_export_ollama_replaces_the_raw_completion_template(
    tmp_path: Path,
) -> None:
    config = experiment(tmp_path / "exp", {"template": "Frage: {{ .Prompt }} Antwort:"})

    export_experiment(config, backend_for(config), "exp")

    lines = (tmp_path / "exp" / "export" / "Modelfile").read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ["FROM ./model.gguf", 'TEMPLATE "Frage: {{ .Prompt }} Antwort:"']
    assert lines.count('TEMPLATE "{{ .Prompt }}"') == 0
