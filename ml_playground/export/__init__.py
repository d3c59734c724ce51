"""Export trained models: GGUF and an Ollama Modelfile (`[export.ollama]`), and a Hugging
Face model folder (`[export.hf]`).

GGUF has two routes, one per model backend (`ml_playground.backends` hands over the
config's): a from-scratch GPT is written natively with the `gguf` package as llama.cpp's
`gpt2`, `llama` or `qwen3` architecture (`gpt.py`); a fine-tuned Hugging Face model has
its LoRA adapters merged and is converted by llama.cpp's own converter (`hf.py`), its
Modelfile wrapping prompts as the run's records were (`prompt_format.py`). A from-scratch
GPT also exports as a folder transformers loads with its stock classes
(`hf_folder.py`), which this project can fine-tune in turn. Every route fills a staging
folder that replaces its export_dir whole, sealed with checksums and an inputs stamp (`bundle.py`).
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
        """Write the bundle's files; return the main one (the GGUF, the weights)."""
        ...


class ExportRoutes(Protocol):
    """What export takes from the config's backend (`ml_playground.backends`): its GGUF
    route, and its Hugging Face folder route (which refuses where there is none)."""

    def export_gguf(self, config: ExperimentConfig, name: str) -> PreparedExport: ...

    def export_hf_folder(self, config: ExperimentConfig, name: str) -> PreparedExport: ...


@dataclass(frozen=True)
class ExportResult:
    export_dir: Path
    model_name: str
    skipped: bool
    created: bool = False


def export_experiment(
    config: ExperimentConfig, routes: ExportRoutes, experiment_name: str | None = None
) -> ExportResult:
    """Export the experiment's trained model to every target its config enables: a
    Hugging Face folder into `[export.hf] export_dir`, GGUF into `[export.ollama] export_dir`.

    Every enabled target is checked before any is written, so a refused one leaves the
    other as it was. The model name is `[export.ollama] model_name`, else
    `experiment_name`, else the name of the folder holding export_dir (by default the
    experiment's folder). The result describes the GGUF bundle, or the Hugging Face folder
    when that is the only target.
    """
    settings = config.export.ollama
    if not settings.enabled and not config.export.hf.enabled:
        raise ExportError(
            "export is disabled for this experiment: set enabled = true under [export.ollama]"
            " (GGUF, Ollama) or [export.hf] (a Hugging Face folder) in its config.toml"
        )
    if settings.enabled:
        llama_cpp.check_quant(settings.quant)
    fallback = experiment_name or settings.export_dir.parent.name
    name = ollama.model_name(settings.model_name, fallback)
    hf_folder = routes.export_hf_folder(config, name) if config.export.hf.enabled else None
    gguf = routes.export_gguf(config, name) if settings.enabled else None
    if hf_folder is not None:
        from ml_playground.export.hf_folder import KEY  # noqa: PLC0415 - imports torch

        hf_dir = config.export.hf.export_dir
        written = _write(hf_folder, hf_dir, KEY)
        if written is not None:
            print(f"exported {hf_dir} (Hugging Face folder, {_described(written)})")
            print(f"load it: AutoModelForCausalLM.from_pretrained({str(hf_dir)!r})")
        if gguf is None:
            return ExportResult(export_dir=hf_dir, model_name=name, skipped=written is None)
    assert gguf is not None  # one of the two targets is enabled
    export_dir = settings.export_dir
    gguf_path = _write(gguf, export_dir, "[export.ollama] export_dir")
    if gguf_path is None:
        return ExportResult(export_dir=export_dir, model_name=name, skipped=True)
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


def _write(prepared: PreparedExport, export_dir: Path, key: str) -> Path | None:
    """Write `prepared` into export_dir whole; its main file, or None when up to date."""
    inputs = prepared.inputs()
    if bundle.up_to_date(export_dir, inputs):
        print(f"export up to date: {export_dir} (inputs unchanged; delete it to re-export)")
        return None
    with bundle.staged(export_dir, key) as staging:
        main = prepared.write(staging)
        bundle.seal(staging, inputs)
    return export_dir / main.name


def _described(path: Path) -> str:
    return f"{path.name} {_megabytes(path.stat().st_size)}"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
