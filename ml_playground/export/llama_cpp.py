"""llama.cpp's own tools, run as subprocesses: the HF converter, the LoRA converter, quantize.

They are not Python dependencies: users vendor the converter scripts from llama.cpp into
`tools/llama_cpp/` (or name them with `convert_bin`) and install `llama-quantize`. The
repository ships a placeholder converter that only explains how to vendor the real one;
it is recognised here by its marker and reported in one line instead of being run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf

from ml_playground.errors import ExportError

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = Path("tools") / "llama_cpp"
# llama.cpp renamed the script; the underscore name is today's, the dash name the old one.
CONVERTER_NAMES = ("convert_hf_to_gguf.py", "convert-hf-to-gguf.py")
LORA_CONVERTER_NAMES = ("convert_lora_to_gguf.py", "convert-lora-to-gguf.py")
PLACEHOLDER_MARKER = "ml-playground placeholder for llama.cpp's converter"
STDERR_TAIL_LINES = 5

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
        """Run with `args`; a failure is an ExportError ending in the tail of its stderr."""
        command = [*self.argv, *map(str, args)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ExportError(f"cannot run {self.name} ({command[0]}): {exc.strerror}") from None
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
            raise ExportError(
                f"{self.name} failed with exit code {result.returncode}: {tail or 'no stderr'}"
            )


def check_quant(quant: str) -> None:
    if quant not in KNOWN_QUANTS:
        raise ExportError(
            f"unknown [export.ollama] quant {quant!r}; use f32, f16 or q8_0, or a llama.cpp"
            " type such as q4_k_m with quant_bin"
        )


def find_converter(convert_bin: str | None) -> Tool:
    """llama.cpp's HF-to-GGUF converter: `convert_bin`, else the vendored script."""
    if convert_bin is not None:
        return _tool(_resolve(convert_bin, "convert_bin"), "llama.cpp converter")
    candidates = [
        root / TOOLS_DIR / name for name in CONVERTER_NAMES for root in (Path.cwd(), REPO_ROOT)
    ]
    present = [path for path in candidates if path.is_file()]
    real = [path for path in present if not is_placeholder(path)]
    if real:
        return _tool(real[0], "llama.cpp converter")
    if present:
        raise ExportError(_placeholder_message(present[0]))
    raise ExportError(
        f"llama.cpp's converter not found (looked for {TOOLS_DIR / CONVERTER_NAMES[0]});"
        " vendor it from llama.cpp or set [export.ollama] convert_bin"
    )


def find_lora_converter(converter: Tool) -> Tool:
    """llama.cpp's LoRA converter, which ships next to the HF converter."""
    folder = Path(converter.argv[-1]).parent
    for name in LORA_CONVERTER_NAMES:
        candidate = folder / name
        if candidate.is_file() and not is_placeholder(candidate):
            return _tool(candidate, "llama.cpp LoRA converter")
    raise ExportError(
        f"llama.cpp's {LORA_CONVERTER_NAMES[0]} not found next to the converter in {folder};"
        " vendor it too, or set adapter_only = false"
    )


def find_quantizer(quant_bin: str | None, quant: str) -> Tool:
    if quant_bin is None:
        raise ExportError(
            f"[export.ollama] quant = {quant!r} needs llama.cpp's llama-quantize: set quant_bin"
            f" to its path, or use one of {', '.join(sorted(NATIVE_QUANTS))}"
        )
    return _tool(_resolve(quant_bin, "quant_bin"), "llama-quantize")


def is_placeholder(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return PLACEHOLDER_MARKER in handle.read(4096)
    except OSError:
        return False


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
    if is_placeholder(path):
        raise ExportError(_placeholder_message(path))
    # Python scripts run with this interpreter, which has gguf, torch and transformers.
    argv = (sys.executable, str(path)) if path.suffix == ".py" else (str(path),)
    return Tool(argv=argv, name=name)


def _placeholder_message(path: Path) -> str:
    return (
        f"{path} is only a placeholder: vendor llama.cpp's convert_hf_to_gguf.py into"
        f" {path.parent} (see {path.parent / 'README.md'}) or set [export.ollama] convert_bin"
    )
