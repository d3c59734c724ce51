"""Export a from-scratch GPT checkpoint: native GGUF, Modelfile and README."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_playground import checkpoint, run_folder
from ml_playground.config import ExperimentConfig
from ml_playground.data.tokenizer import TIKTOKEN_ALIASES, TokenizerSpec, load_tiktoken_encoding
from ml_playground.digest import file_digest
from ml_playground.errors import ExportError
from ml_playground.export import llama_cpp
from ml_playground.export.bpe_vocab import GPT2_PRETOKENIZER_ENCODINGS, ByteLevelVocab, gpt2_vocab
from ml_playground.export.gguf_gpt import arch_for, write_gpt_gguf
from ml_playground.export.llama_cpp import NATIVE_QUANTS, NativeQuant
from ml_playground.export.modelfile import Modelfile, SamplingDefaults, raw_completion_template
from ml_playground.export.readme import BundleReadme, example_prompt
from ml_playground.model.config import GPTConfig
from ml_playground.run_folder import Slot

GGUF_NAME = "model.gguf"
# The from-scratch GPT written natively, whichever llama.cpp architecture holds it.
ROUTE = "gguf-native-gpt"
# Bump when the bytes this route writes change, so that older stamps no longer match.
ROUTE_VERSION = 2

CHAR_REFUSAL = (
    "cannot export a character-level model to GGUF faithfully: llama.cpp's tokenizers need an"
    " end-of-text token this model never learned and give that role to an ordinary character"
    ' by default; train with [prepare] tokenizer = "tiktoken", encoding = "gpt2" to export'
)


@dataclass(frozen=True)
class GPTExport:
    """A checkpoint, checked to be exportable, and everything the bundle is made from."""

    config: ExperimentConfig
    name: str
    source: Path
    ckpt: checkpoint.Checkpoint
    spec: TokenizerSpec

    @classmethod
    def prepare(cls, config: ExperimentConfig, name: str) -> GPTExport:
        settings = config.export.ollama
        source = checkpoint_path(config.train.runtime.out_dir, settings.checkpoint)
        ckpt = checkpoint.load_trained(config.train.runtime.out_dir, source)
        spec = ckpt.tokenizer
        exportable_encoding(spec)
        if settings.quant not in NATIVE_QUANTS:
            llama_cpp.find_quantizer(settings.quant_bin, settings.quant)
        return cls(config=config, name=name, source=source, ckpt=ckpt, spec=spec)

    def inputs(self) -> dict[str, Any]:
        settings = self.config.export.ollama
        inputs: dict[str, Any] = {
            "route": ROUTE,
            "route_version": ROUTE_VERSION,
            "checkpoint": {"file": self.source.name, "sha256": file_digest(self.source)},
            "model_name": self.name,
            "settings": settings.model_dump(mode="json", exclude={"export_dir", "create"}),
            "sampling": self.config.sample.sample.model_dump(
                mode="json", include={"start", "temperature", "top_k", "top_p"}
            ),
        }
        if settings.quant not in NATIVE_QUANTS:
            quantizer = llama_cpp.find_quantizer(settings.quant_bin, settings.quant)
            inputs["quantizer"] = file_digest(Path(quantizer.argv[-1]))
        return inputs

    def write(self, staging: Path) -> Path:
        """Fill `staging` with model.gguf, Modelfile and README.md; return the GGUF."""
        settings = self.config.export.ollama
        model_config = self.ckpt.model_args
        vocab = vocab_for(self.spec)
        target = staging / GGUF_NAME
        self._write_gguf(target, model_config, vocab)
        sampling = SamplingDefaults.from_settings(self.config.sample.sample)
        modelfile = Modelfile(
            weights=f"./{GGUF_NAME}",
            template=settings.template or raw_completion_template(settings.system),
            sampling=sampling,
            stops=[vocab.eos_token, *settings.stop],
            system=settings.system,
            context_length=model_config.block_size,
        )
        (staging / "Modelfile").write_text(modelfile.render(), encoding="utf-8")
        (staging / "README.md").write_text(
            self._readme(model_config, vocab, sampling), encoding="utf-8"
        )
        return target

    def _write_gguf(self, target: Path, model_config: GPTConfig, vocab: ByteLevelVocab) -> None:
        quant = self.config.export.ollama.quant
        native = native_quant(quant)
        if native is not None:
            write_gpt_gguf(
                target, self.ckpt.model, model_config, vocab, quant=native, model_name=self.name
            )
            return
        # llama-quantize starts best from full precision.
        full = target.with_name("model-f32.gguf")
        write_gpt_gguf(
            full, self.ckpt.model, model_config, vocab, quant="f32", model_name=self.name
        )
        quantizer = llama_cpp.find_quantizer(self.config.export.ollama.quant_bin, quant)
        quantizer.run([full, target, quant.upper()])
        full.unlink()
        if not target.is_file():
            raise ExportError(f"llama-quantize reported success but wrote no {target}")

    def _readme(
        self, model_config: GPTConfig, vocab: ByteLevelVocab, sampling: SamplingDefaults
    ) -> str:
        quant = self.config.export.ollama.quant
        arch = arch_for(model_config).name
        return BundleReadme(
            model_name=self.name,
            source=(
                f"`{self.source}` (iteration {self.ckpt.state.iter_num},"
                f" best val loss {self.ckpt.state.best_val_loss:.4f})"
            ),
            weights=[(GGUF_NAME, f"the model: llama.cpp architecture {arch}, {quant}")],
            prompt=example_prompt(self.config),
            sampling=sampling,
            context_length=model_config.block_size,
            notes=[
                f"Tokenizer: {self.spec.describe()}, GPT-2's byte-level BPE with its merges;"
                f" generation stops at `{vocab.eos_token}`.",
                "The template is raw completion: the model continues your prompt as text, as"
                " it was trained to.",
                f"The context is {model_config.block_size} tokens, the length the model was"
                " trained on; the Modelfile sets `num_ctx` to it.",
            ],
        ).render()


def checkpoint_path(out_dir: Path, which: Slot | None) -> Path:
    """The checkpoint `[export.ollama] checkpoint` names; by default the one sampling reads."""
    if which is None:
        return run_folder.gpt_for_sampling(out_dir)
    path = run_folder.checkpoint_file(out_dir, which)
    if not path.is_file():
        raise ExportError(
            f"no checkpoint {path} ([export.ollama] checkpoint = {which!r}); train first with"
            " `ml-playground train <experiment>` or choose another checkpoint"
        )
    return path


def exportable_encoding(spec: TokenizerSpec) -> str:
    """The tiktoken encoding a GGUF can express faithfully, or a one-line refusal."""
    if spec.kind == "char" or spec.encoding is None:
        raise ExportError(CHAR_REFUSAL)
    resolved = TIKTOKEN_ALIASES.get(spec.encoding, spec.encoding)
    if resolved not in GPT2_PRETOKENIZER_ENCODINGS:
        raise ExportError(
            f"cannot export tiktoken encoding {resolved!r} to GGUF faithfully: llama.cpp would"
            " split text with another pre-tokenizer than the model was trained with; only"
            f" {', '.join(sorted(GPT2_PRETOKENIZER_ENCODINGS))} (GPT-2's BPE) export"
        )
    return resolved


def vocab_for(spec: TokenizerSpec) -> ByteLevelVocab:
    resolved = exportable_encoding(spec)
    # The same loader as training: GPT-2's ranks from the package, others via tiktoken.
    return gpt2_vocab(resolved, load_tiktoken_encoding(resolved))


def native_quant(quant: str) -> NativeQuant | None:
    """`quant` when gguf can write it directly, else None (llama-quantize's job)."""
    return next((native for native in NATIVE_QUANTS if native == quant), None)
