"""Ollama's side: model names it accepts, and `ollama create` when the binary is installed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ml_playground.errors import ExportError
from ml_playground.export.llama_cpp import Tool

# Ollama's names: letters, digits, '.', '_', '-', optional namespace/ and :tag.
PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
MODEL_NAME = re.compile(rf"^{PART}(/{PART})?(:[A-Za-z0-9._-]+)?$")
OLLAMA = "ollama"


def model_name(configured: str | None, experiment: str) -> str:
    """`model_name` from the config, else the experiment's name in Ollama's spelling."""
    if configured is not None:
        if not MODEL_NAME.match(configured):
            raise ExportError(
                f"[export.ollama] model_name = {configured!r} is not a valid Ollama name;"
                " use letters, digits, '.', '_' and '-' (optionally namespace/name:tag)"
            )
        return configured
    fallback = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment).strip("-._") or "ml-playground"
    return fallback.lower()


def create(name: str, export_dir: Path) -> bool:
    """Run `ollama create NAME -f Modelfile` if ollama is on PATH; False when it is not."""
    binary = shutil.which(OLLAMA)
    if binary is None:
        return False
    Tool(argv=(binary,), name="ollama create").run(["create", name, "-f", export_dir / "Modelfile"])
    return True
