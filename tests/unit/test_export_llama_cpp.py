"""Finding and running llama.cpp's tools: the converter, its placeholder, llama-quantize."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ml_playground.errors import ExportError
from ml_playground.export import llama_cpp

REPO_ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = REPO_ROOT / "tools" / "llama_cpp" / "convert-hf-to-gguf.py"


def script(path: Path, body: str) -> Path:
    path.write_text(f"import sys\n{body}\n", encoding="utf-8")
    return path


def test_the_shipped_placeholder_explains_how_to_vendor_and_fails() -> None:
    result = subprocess.run(
        [sys.executable, str(PLACEHOLDER), "--help"], capture_output=True, text=True, check=False
    )

    assert result.returncode != 0
    assert "placeholder" in result.stderr
    assert "convert_hf_to_gguf.py" in result.stderr
    assert "tools/llama_cpp/README.md" in result.stderr


def test_without_a_vendored_converter_the_placeholder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(llama_cpp, "REPO_ROOT", REPO_ROOT)

    with pytest.raises(ExportError, match=r"convert-hf-to-gguf\.py is only a placeholder"):
        llama_cpp.find_converter(None)


def test_convert_bin_pointing_at_the_placeholder_is_refused() -> None:
    with pytest.raises(ExportError, match="only a placeholder"):
        llama_cpp.find_converter(str(PLACEHOLDER))


def test_no_converter_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(llama_cpp, "REPO_ROOT", tmp_path)

    with pytest.raises(ExportError, match="converter not found"):
        llama_cpp.find_converter(None)


def test_a_vendored_converter_in_the_working_directory_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    vendored = tmp_path / "tools" / "llama_cpp" / "convert_hf_to_gguf.py"
    vendored.parent.mkdir(parents=True)
    script(vendored, "sys.exit(0)")

    tool = llama_cpp.find_converter(None)

    assert tool.argv == (sys.executable, str(vendored))


def test_convert_bin_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"convert_bin = .* is neither a file nor a command"):
        llama_cpp.find_converter(str(tmp_path / "missing.py"))


def test_a_failing_tool_reports_the_tail_of_its_stderr(tmp_path: Path) -> None:
    failing = script(
        tmp_path / "fail.py",
        "for i in range(20): print(f'line {i}', file=sys.stderr)\nsys.exit(3)",
    )
    tool = llama_cpp.find_converter(str(failing))

    with pytest.raises(ExportError) as error:
        tool.run(["model_dir"])

    message = str(error.value)
    assert "exit code 3" in message
    assert "line 19" in message
    assert "line 10" not in message  # only the tail
    assert "\n" not in message


def test_unknown_quant_is_refused_with_the_choices() -> None:
    with pytest.raises(ExportError, match=r"unknown .* quant 'q9'"):
        llama_cpp.check_quant("q9")
    for quant in ("f32", "f16", "bf16", "q8_0", "q4_k_m", "q6_k"):
        llama_cpp.check_quant(quant)


def test_quant_beyond_q8_0_needs_quant_bin() -> None:
    with pytest.raises(ExportError, match=r"quant = 'q4_k_m' needs llama\.cpp's llama-quantize"):
        llama_cpp.find_quantizer(None, "q4_k_m")
