"""llama.cpp's own tools, run as subprocesses: the HF converter, the LoRA converter, quantize.

They are not Python dependencies: `make llama-cpp-converters` puts the converter scripts
into `tools/llama_cpp/` and `make llama-cpp` builds `llama-quantize` into
`tools/llama_cpp/bin/` (see tools/llama_cpp/README.md); `convert_bin` and `quant_bin`
name other copies. Their progress streams to stderr as they run; a failure ends in one
line with the last lines they printed.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf

from ml_playground.errors import ExportError

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = Path("tools") / "llama_cpp"
CONVERTER = "convert_hf_to_gguf.py"
LORA_CONVERTER = "convert_lora_to_gguf.py"
QUANTIZER = Path("bin") / "llama-quantize"
TAIL_LINES = 5

# What the converter writes itself; anything else goes through llama-quantize.
CONVERTER_OUTTYPES = frozenset({"f32", "f16", "bf16", "q8_0"})
# What gguf-py writes itself, without llama-quantize: our GPT writer and the converter.
NativeQuant = Literal["f32", "f16", "q8_0"]
NATIVE_QUANTS: tuple[NativeQuant, ...] = ("f32", "f16", "q8_0")
QUANTIZE_TYPES = frozenset(
    name.removeprefix("MOSTLY_").lower()
    for name in gguf.LlamaFileType.__members__
    if name.startswith("MOSTLY_")
)
KNOWN_QUANTS = CONVERTER_OUTTYPES | QUANTIZE_TYPES


@dataclass(frozen=True)
class Tool:
    """A command to run: the argv prefix (interpreter and script, or a binary) and its name."""

    argv: tuple[str, ...]
    name: str

    def run(self, args: Sequence[str | Path]) -> None:
        """Run with `args`, echoing its output to stderr as it comes (conversions take
        minutes); a failure is an ExportError ending in the last lines it printed."""
        command = [*self.argv, *map(str, args)]
        # Python buffers a pipe in blocks; unbuffered, the converter's log arrives line by line.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        try:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
            )
        except OSError as exc:
            raise ExportError(f"cannot run {self.name} ({command[0]}): {exc.strerror}") from None
        with process:  # waits for the tool, also when reading is interrupted
            assert process.stdout is not None  # PIPE was asked for
            # newline="": a progress bar's carriage returns reach the terminal as they are;
            # its frames (ending in a carriage return) are not kept for the error line.
            text = io.TextIOWrapper(process.stdout, encoding="utf-8", errors="replace", newline="")
            with text:
                for line in text:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                    if line.strip() and not line.endswith("\r"):
                        tail.append(line.strip())
        if process.wait() != 0:
            raise ExportError(
                f"{self.name} failed with exit code {process.returncode}:"
                f" {' | '.join(tail) or 'no output'}"
            )


def check_quant(quant: str) -> None:
    if quant not in KNOWN_QUANTS:
        raise ExportError(
            f"unknown [export.ollama] quant {quant!r}; use f32, f16 or q8_0, or a llama.cpp"
            " type such as q4_k_m (through llama-quantize: `make llama-cpp` or quant_bin)"
        )


def find_converter(convert_bin: str | None) -> Tool:
    """llama.cpp's HF-to-GGUF converter: `convert_bin`, else the one `make` fetched."""
    if convert_bin is not None:
        return _tool(_resolve(convert_bin, "convert_bin"), "llama.cpp converter")
    converter = _fetched(Path(CONVERTER), "make llama-cpp-converters", "convert_bin")
    return _tool(converter, "llama.cpp converter")


def find_lora_converter(converter: Tool) -> Tool:
    """llama.cpp's LoRA converter, which ships next to the HF converter."""
    candidate = Path(converter.argv[-1]).parent / LORA_CONVERTER
    if not candidate.is_file():
        raise ExportError(
            f"llama.cpp's {LORA_CONVERTER} not found next to the converter in"
            f" {candidate.parent}; run `make llama-cpp-converters`, or set adapter_only = false"
        )
    return _tool(candidate, "llama.cpp LoRA converter")


def find_quantizer(quant_bin: str | None, quant: str) -> Tool:
    """llama.cpp's llama-quantize: `quant_bin`, else the one `make llama-cpp` built."""
    if quant_bin is not None:
        return _tool(_resolve(quant_bin, "quant_bin"), "llama-quantize")
    try:
        return _tool(_fetched(QUANTIZER, "make llama-cpp", "quant_bin"), "llama-quantize")
    except ExportError as exc:
        raise ExportError(
            f"[export.ollama] quant = {quant!r} needs llama.cpp's llama-quantize: {exc}"
            f" (or use one of {', '.join(NATIVE_QUANTS)})"
        ) from None


def _fetched(relative: Path, make: str, key: str) -> Path:
    """tools/llama_cpp/<relative> in the working directory, else in this repository."""
    candidates = [root / TOOLS_DIR / relative for root in (Path.cwd(), REPO_ROOT)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ExportError(f"{candidates[-1]} not found; run `{make}`, or set [export.ollama] {key}")


def _resolve(command: str, key: str) -> Path:
    """A path (relative to the working directory) or a command name on PATH."""
    path = Path(command).expanduser()
    if path.is_file():
        return path.resolve()
    found = shutil.which(command)
    if found is None:
        raise ExportError(
            f"[export.ollama] {key} = {command!r} is neither a file nor a command on PATH"
        )
    return Path(found)


def _tool(path: Path, name: str) -> Tool:
    # Python scripts run with this interpreter, which has gguf, torch and transformers.
    argv = (sys.executable, str(path)) if path.suffix == ".py" else (str(path),)
    return Tool(argv=argv, name=name)
