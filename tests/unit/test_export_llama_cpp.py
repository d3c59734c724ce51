"""Finding and running llama.cpp's tools: the converters, llama-quantize."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ml_playground.errors import ExportError
from ml_playground.export import llama_cpp


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"import sys\n{body}\n", encoding="utf-8")
    return path


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and a repository without anything `make llama-cpp` fetches."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(llama_cpp, "REPO_ROOT", tmp_path / "repo")
    return tmp_path


def test_no_converter_anywhere_says_to_run_make(nowhere: Path) -> None:
    with pytest.raises(ExportError) as error:
        llama_cpp.find_converter(None)

    message = str(error.value)
    assert str(nowhere / "repo" / "tools" / "llama_cpp" / "convert_hf_to_gguf.py") in message
    assert "run `make llama-cpp-converters`, or set [export.ollama] convert_bin" in message


def test_the_converter_in_the_repository_is_found_from_any_directory(nowhere: Path) -> None:
    fetched = script(nowhere / "repo" / "tools" / "llama_cpp" / "convert_hf_to_gguf.py", "")

    tool = llama_cpp.find_converter(None)

    assert tool.argv == (sys.executable, str(fetched))


def test_the_lora_converter_is_the_one_next_to_the_converter(nowhere: Path) -> None:
    folder = nowhere / "repo" / "tools" / "llama_cpp"
    converter = llama_cpp.find_converter(str(script(folder / "convert_hf_to_gguf.py", "")))
    missing = r"convert_lora_to_gguf\.py not found .* `make llama-cpp-converters`"
    with pytest.raises(ExportError, match=missing):
        llama_cpp.find_lora_converter(converter)

    lora = script(folder / "convert_lora_to_gguf.py", "")

    assert llama_cpp.find_lora_converter(converter).argv == (sys.executable, str(lora))


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


def test_quant_beyond_q8_0_without_llama_quantize_says_to_run_make(nowhere: Path) -> None:
    with pytest.raises(ExportError) as error:
        llama_cpp.find_quantizer(None, "q4_k_m")

    message = str(error.value)
    assert message.startswith("[export.ollama] quant = 'q4_k_m' needs llama.cpp's llama-quantize")
    assert "run `make llama-cpp`, or set [export.ollama] quant_bin" in message


def test_llama_quantize_built_by_make_is_used_without_quant_bin(nowhere: Path) -> None:
    built = nowhere / "tools" / "llama_cpp" / "bin" / "llama-quantize"
    built.parent.mkdir(parents=True)
    built.write_text("#!/bin/sh\n", encoding="utf-8")

    assert llama_cpp.find_quantizer(None, "q4_k_m").argv == (str(built),)


def test_a_tool_streams_its_output_to_stderr_as_it_runs(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    chatty = script(
        tmp_path / "chatty.py",
        "print('INFO:hf-to-gguf:Loading model', file=sys.stderr)\n"
        "print('Writing: 100%', end='\\r')\nprint('done')",
    )

    llama_cpp.find_converter(str(chatty)).run([])

    out, err = capfd.readouterr()
    assert out == ""
    assert "INFO:hf-to-gguf:Loading model\n" in err
    assert "Writing: 100%\rdone\n" in err


def test_the_error_line_ends_with_the_last_lines_not_progress_bar_frames(tmp_path: Path) -> None:
    failing = script(
        tmp_path / "fail.py",
        "print('NotImplementedError: no such architecture')\n"
        "for i in range(9): print(f'Writing: {i}0%', end='\\r')\nsys.exit(1)",
    )

    with pytest.raises(ExportError) as error:
        llama_cpp.find_converter(str(failing)).run([])

    assert str(error.value).endswith("exit code 1: NotImplementedError: no such architecture")
