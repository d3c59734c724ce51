"""Export a LoRA fine-tuned Hugging Face model through llama.cpp's own converter.

A fine-tuned model can be any architecture llama.cpp knows, so its GGUF is left to
llama.cpp's `convert_hf_to_gguf.py`: the adapters are merged into the base on the CPU, in
the configured dtype, saved with the fine-tuning tokenizer as a Hugging Face folder, and
converted; `llama-quantize` takes it further when asked. With `adapter_only` the adapter
stays separate: llama.cpp's `convert_lora_to_gguf.py` writes it next to the base. The
Modelfile's template and stops come from `prompt_format.py`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ml_playground import run_folder
from ml_playground.checkpoint import verify_adapters
from ml_playground.config import ExperimentConfig, HFModelConfig
from ml_playground.data.dataset_folder import TOKENIZER_DIR
from ml_playground.digest import file_digest, folder_digests
from ml_playground.errors import ExportError
from ml_playground.export import llama_cpp
from ml_playground.export.modelfile import Modelfile, SamplingDefaults
from ml_playground.export.prompt_format import PromptFormat, prompt_format
from ml_playground.export.readme import BundleReadme, example_prompt
from ml_playground.finetune.hub import ModelSource, load_tokenizer
from ml_playground.finetune.model import (
    fit_embeddings,
    is_adapter_folder,
    load_adapters,
    load_base,
    merge_adapters,
    read_adapter_config,
    weights_dtype,
)
from ml_playground.run_folder import HFRunMeta, Slot

ROUTE = "llama.cpp-convert-hf"
ROUTE_VERSION = 1
MODEL_GGUF = "model.gguf"
BASE_GGUF = "base.gguf"
ADAPTER_GGUF = "adapter.gguf"
WORK_DIR = ".work"


@dataclass(frozen=True)
class HFExport:
    """A fine-tuned run, its tools found, ready to merge and convert."""

    config: ExperimentConfig
    name: str
    hf: HFModelConfig
    adapters: Path
    tokenizer_dir: Path
    converter: llama_cpp.Tool
    lora_converter: llama_cpp.Tool | None
    quantizer: llama_cpp.Tool | None

    @classmethod
    def prepare(cls, config: ExperimentConfig, name: str) -> HFExport:
        """Find adapters, tokenizer and tools now, before minutes of merging."""
        settings = config.export.ollama
        hf = config.train.hf_model
        if hf is None:
            raise ValueError("the Hugging Face route needs [train.hf_model]")
        out_dir = config.train.runtime.out_dir
        check_base(out_dir, hf)
        adapters = adapter_dir(out_dir, settings.checkpoint)
        if settings.adapter_only:
            check_adapter_only(adapters)
        converter = llama_cpp.find_converter(settings.convert_bin)
        lora = llama_cpp.find_lora_converter(converter) if settings.adapter_only else None
        quantizer = None
        if settings.quant not in llama_cpp.CONVERTER_OUTTYPES:
            quantizer = llama_cpp.find_quantizer(settings.quant_bin, settings.quant)
        return cls(
            config=config,
            name=name,
            hf=hf,
            adapters=adapters,
            tokenizer_dir=tokenizer_dir(config),
            converter=converter,
            lora_converter=lora,
            quantizer=quantizer,
        )

    def inputs(self) -> dict[str, Any]:
        settings = self.config.export.ollama
        tools = [self.converter, self.lora_converter, self.quantizer]
        return {
            "route": ROUTE,
            "route_version": ROUTE_VERSION,
            "base": {"model_name": self.hf.model_name, "revision": self.hf.revision},
            "dtype": str(self._dtype()),
            "adapters": {"name": self.adapters.name, "files": folder_digests(self.adapters)},
            "tokenizer": folder_digests(self.tokenizer_dir),
            "tools": [file_digest(Path(tool.argv[-1])) for tool in tools if tool],
            "model_name": self.name,
            "settings": settings.model_dump(mode="json", exclude={"export_dir", "create"}),
            "sampling": self.config.sample.sample.model_dump(
                mode="json", include={"start", "temperature", "top_k", "top_p"}
            ),
            "prompt_format": prompt_format(self.config, self.tokenizer_dir).description,
        }

    def write(self, staging: Path) -> Path:
        """Merge (or not), convert, quantize; then the Modelfile and README."""
        work = staging / WORK_DIR
        if self.lora_converter is None:
            weights = self._convert_merged(work, staging)
            adapter = None
        else:
            weights, adapter = self._convert_adapter(work, staging, self.lora_converter)
        shutil.rmtree(work)
        settings = self.config.export.ollama
        fmt = prompt_format(self.config, self.tokenizer_dir)
        sampling = SamplingDefaults.from_settings(self.config.sample.sample)
        modelfile = Modelfile(
            weights=f"./{weights.name}",
            adapter=f"./{adapter.name}" if adapter else None,
            template=settings.template or fmt.template,
            system=settings.system,
            sampling=sampling,
            stops=[*fmt.stops, *settings.stop],
        )
        (staging / "Modelfile").write_text(modelfile.render(), encoding="utf-8")
        (staging / "README.md").write_text(
            self._readme(weights, adapter, fmt, sampling), encoding="utf-8"
        )
        return weights

    def _convert_merged(self, work: Path, staging: Path) -> Path:
        merged = work / "merged"
        if is_adapter_folder(self.adapters):
            print(f"merging {self.adapters} into {self.hf.model_name} ({self._dtype()})")
            model = merge_adapters(
                load_adapters(self._base_model(), self.adapters, trainable=False)
            )
            model.save_pretrained(merged)  # pyright: ignore[reportUnknownMemberType] - untyped library
        else:
            # [train.peft] enabled = false saved the whole fine-tuned model: nothing to merge.
            shutil.copytree(self.adapters, merged, ignore=shutil.ignore_patterns("*.pt"))
        _copy_tokenizer(self.tokenizer_dir, merged)
        return self._gguf_from_hf(merged, staging / MODEL_GGUF, work)

    def _convert_adapter(
        self, work: Path, staging: Path, lora_converter: llama_cpp.Tool
    ) -> tuple[Path, Path]:
        base = work / "base"
        self._base_model().save_pretrained(base)  # pyright: ignore[reportUnknownMemberType] - untyped library
        _copy_tokenizer(self.tokenizer_dir, base)
        weights = self._gguf_from_hf(base, staging / BASE_GGUF, work)
        adapter = staging / ADAPTER_GGUF
        outtype = self.config.export.ollama.quant
        outtype = outtype if outtype in llama_cpp.CONVERTER_OUTTYPES else "f16"
        lora_converter.run(
            [self.adapters, "--base", base, "--outfile", adapter, "--outtype", outtype]
        )
        _require_output(adapter, lora_converter)
        return weights, adapter

    def _gguf_from_hf(self, hf_dir: Path, target: Path, work: Path) -> Path:
        quant = self.config.export.ollama.quant
        if self.quantizer is None:
            self.converter.run([hf_dir, "--outfile", target, "--outtype", quant])
            _require_output(target, self.converter)
            return target
        full = work / "model-f16.gguf"
        self.converter.run([hf_dir, "--outfile", full, "--outtype", "f16"])
        _require_output(full, self.converter)
        self.quantizer.run([full, target, quant.upper()])
        _require_output(target, self.quantizer)
        return target

    def _dtype(self) -> torch.dtype:
        """The dtype the base was fine-tuned in; the merge keeps it."""
        return weights_dtype(self.hf, self.config.train.runtime)

    def _base_model(self) -> PreTrainedModel:
        """The base on the CPU, its embeddings grown to the fine-tuning tokenizer.

        The rows of added tokens come from the adapters, so they need no initialisation.
        """
        model = load_base(self.hf, ModelSource.from_config(self.hf), dtype=self._dtype())
        size = len(load_tokenizer(ModelSource.local(self.tokenizer_dir)))
        fit_embeddings(model, size, init_new_rows=False)
        return model

    def _readme(
        self, weights: Path, adapter: Path | None, fmt: PromptFormat, sampling: SamplingDefaults
    ) -> str:
        quant = self.config.export.ollama.quant
        files = [(weights.name, f"the {'base ' if adapter else ''}model, {quant}")]
        notes = [
            f"Base model: {self.hf.model_name}"
            + (f" (revision {self.hf.revision})" if self.hf.revision else "")
            + f"; LoRA adapters: `{self.adapters}`.",
            fmt.description,
        ]
        if adapter is None:
            notes.append("The adapters are merged into the weights; no base model is needed.")
        else:
            files.append((adapter.name, "the LoRA adapter, applied by the Modelfile's ADAPTER"))
            notes.append(
                f"llama.cpp applies the adapter with `--lora {adapter.name}`:"
                f" `llama-cli -m {weights.name} --lora {adapter.name} ...`."
            )
        return BundleReadme(
            model_name=self.name,
            source=f"the fine-tuned adapters `{self.adapters}`",
            weights=files,
            prompt=example_prompt(self.config),
            sampling=sampling,
            notes=notes,
        ).render()


def adapter_dir(out_dir: Path, which: Slot | None) -> Path:
    """The adapters `checkpoint` names; by default those sampling uses (best, final, last)."""
    folder = (
        run_folder.adapters_for_sampling(out_dir)
        if which is None
        else run_folder.adapters_dir(out_dir, which)
    )
    if folder is None or not folder.is_dir():
        names = run_folder.SAMPLING_ORDER if which is None else (which,)
        looked = ", ".join(str(run_folder.adapters_dir(out_dir, name)) for name in names)
        raise ExportError(
            f"no LoRA adapters to export (looked for {looked}); fine-tune first with"
            " `ml-playground train <experiment>`"
        )
    verify_adapters(folder)
    return folder


def check_adapter_only(adapters: Path) -> None:
    """Refuse adapters that llama.cpp's LoRA converter cannot carry, before any work."""
    if not is_adapter_folder(adapters):
        raise ExportError(
            f"{adapters} holds a whole fine-tuned model ([train.peft] enabled = false), not"
            " LoRA adapters; set [export.ollama] adapter_only = false"
        )
    if read_adapter_config(adapters).get("trainable_token_indices"):
        raise ExportError(
            f"adapter_only cannot export {adapters}: it holds trained embedding rows of added"
            " tokens, which llama.cpp's LoRA converter only takes as lora_A/lora_B; set"
            " [export.ollama] adapter_only = false to export the merged model"
        )


def check_base(out_dir: Path, hf: HFModelConfig) -> None:
    """Adapters merged into another base than they were trained on would be garbage."""
    meta = run_folder.read_run_meta_of(out_dir, HFRunMeta)
    if meta is not None:
        meta.check_base(out_dir, hf, ExportError)


def tokenizer_dir(config: ExperimentConfig) -> Path:
    """The fine-tuning tokenizer: saved with the run, else the prepared dataset's."""
    saved = run_folder.tokenizer_dir(config.train.runtime.out_dir)
    for candidate in (saved, config.train.data.dataset_dir / TOKENIZER_DIR):
        if candidate.is_dir():
            return candidate
    raise ExportError(
        f"no tokenizer in {saved}; fine-tune first with `ml-playground train <experiment>`"
    )


def _copy_tokenizer(tokenizer: Path, target: Path) -> None:
    for path in tokenizer.iterdir():
        if path.is_file():
            shutil.copy2(path, target / path.name)


def _require_output(path: Path, tool: llama_cpp.Tool) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise ExportError(f"{tool.name} exited successfully but wrote no {path.name}")
