"""Export trained models to GGUF and an Ollama Modelfile, driven by `[export.ollama]`.

Two routes, chosen by the config like every pipeline step: a from-scratch GPT is written
natively with the `gguf` package as llama.cpp's `gpt2` architecture (`gpt.py`); a
fine-tuned Hugging Face model has its LoRA adapters merged and is converted by llama.cpp's
own converter (`hf.py`). Both fill a staging folder that replaces `export_dir` whole,
sealed with checksums and an inputs stamp (`bundle.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ml_playground.config import ExperimentConfig
from ml_playground.errors import ExportError
from ml_playground.export import bundle, llama_cpp, ollama


class PreparedExport(Protocol):
    """A route's export, its inputs checked, ready to write into a staging folder."""

    @property
    def name(self) -> str: ...

    def inputs(self) -> dict[str, Any]: ...

    def write(self, staging: Path) -> Path:
        """Write the bundle's files; return the main GGUF."""
        ...


@dataclass(frozen=True)
class ExportResult:
    export_dir: Path
    model_name: str
    skipped: bool
    created: bool = False


def export_experiment(config: ExperimentConfig, experiment_name: str | None = None) -> ExportResult:
    """Export the experiment's trained model into `[export.ollama] export_dir`.

    The Ollama model name is `model_name`, else `experiment_name`, else the name of the
    folder holding export_dir (by default the experiment's folder).
    """
    settings = config.export.ollama
    if not settings.enabled:
        raise ExportError(
            "export is disabled for this experiment: set enabled = true under [export.ollama]"
            " in its config.toml"
        )
    llama_cpp.check_quant(settings.quant)
    fallback = experiment_name or settings.export_dir.parent.name
    name = ollama.model_name(settings.model_name, fallback)
    prepared = _prepare(config, name)
    export_dir = settings.export_dir
    inputs = prepared.inputs()
    if bundle.up_to_date(export_dir, inputs):
        print(f"export up to date: {export_dir} (inputs unchanged; delete it to re-export)")
        return ExportResult(export_dir=export_dir, model_name=name, skipped=True)
    with bundle.staged(export_dir) as staging:
        gguf_path = prepared.write(staging)
        bundle.seal(staging, inputs)
        size = gguf_path.stat().st_size
    print(f"exported {export_dir / gguf_path.name} ({settings.quant}, {_megabytes(size)})")
    print(f"wrote {export_dir / 'Modelfile'}, README.md, {bundle.CHECKSUMS}")
    created = settings.create and ollama.create(name, export_dir)
    if created:
        print(f"created Ollama model {name}: ollama run {name}")
    else:
        if settings.create:
            print("ollama is not on PATH, so no model was created")
        print(f"next: ollama create {name} -f {export_dir / 'Modelfile'} && ollama run {name}")
    return ExportResult(export_dir=export_dir, model_name=name, skipped=False, created=created)


def _prepare(config: ExperimentConfig, name: str) -> PreparedExport:
    # Each route imports torch (and the HF one transformers) only when it runs.
    if config.uses_hf_model:
        from ml_playground.export.hf import HFExport  # noqa: PLC0415 - see above

        return HFExport.prepare(config, name)
    from ml_playground.export.gpt import GPTExport  # noqa: PLC0415 - see above

    return GPTExport.prepare(config, name)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
