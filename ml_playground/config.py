"""The experiment configuration's schema: one frozen pydantic model per TOML section.

`ExperimentConfig` is a whole experiment file; `config_loader.py` reads the TOML files
into it (layering, origins, path anchoring, error messages, rules that relate two keys).
The walk at the end lists the schema's keys, for the loader and for the tests.
"""

from __future__ import annotations

import datetime
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

FILE_PROMPT_PREFIX = "FILE:"
"""How a text key (sample.sample.start, prepare.chat_template) names a file instead."""
PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
"""How a key naming a local folder or a hub name (prepare.hf_dataset,
train.hf_model.model_name) says it is a path even before the folder exists (an export
not yet run): hub names never start so."""


class Section(BaseModel):
    """Base of every config section: immutable, strict types, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
Device = Literal["cpu", "mps", "cuda", "auto"]
DType = Literal["float32", "bfloat16", "float16"]
DTypeChoice = Literal[DType, "auto"]
GradientCheckpointing = bool | Literal["auto"]
"""What a dtype key accepts: a dtype, or "auto" (runtime: from the hardware, see device.py)."""
OptimizerName = Literal["adamw", "muon"]
Arch = Literal["gpt2", "llama"]
RecordsSourceFormat = Literal["text", "prompt_completion", "messages"]
"""The shape of the JSON objects in [prepare] records_path (see data/chat_records.py)."""
PrepareSource = Literal["text", "speeches", "records"]
"""The built-in sources [prepare] source names (experiments/sources.py): a text corpus,
speeches (CSV tables or .txt files), JSONL records or a Hugging Face datasets split."""
SpeechSuffix = Literal[".csv", ".txt"]
SPEECH_SUFFIXES: tuple[SpeechSuffix, ...] = (".csv", ".txt")


class SpeechesConfig(Section):
    """[prepare.speeches]: which speeches the records dataset keeps and how it writes them."""

    add_structure_tokens: bool = False
    doc_separator: str = "\n\n"
    skip_chair: bool = True
    skip_interjections: bool = True
    periods: list[int] = Field(default_factory=list[int])
    parties: list[str] = Field(default_factory=list[str])
    date_from: datetime.date | None = None
    date_to: datetime.date | None = None
    max_records: PositiveInt | None = None
    # Which files below raw_dir are speeches: a .csv is a table of them, a .txt one speech.
    suffixes: Annotated[list[SpeechSuffix], Field(min_length=1)] = Field(
        default_factory=lambda: list(SPEECH_SUFFIXES)
    )

    # A date is a TOML date or a quoted "YYYY-MM-DD". A validator's ValueError is its own
    # sentence in the loader's error line (config_loader._config_error), with the file.
    @field_validator("date_from", "date_to", mode="before")
    @classmethod
    def _quoted_date(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            key = f"prepare.speeches.{info.field_name}"
            raise ValueError(f"{key} = {value!r} is not a date; write it as YYYY-MM-DD") from None

    @model_validator(mode="after")
    def _dates_in_order(self) -> SpeechesConfig:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError(
                f"prepare.speeches.date_from = {self.date_from} is after "
                f"prepare.speeches.date_to = {self.date_to}; swap or fix them"
            )
        return self


class PrepareConfig(Section):
    # A built-in source; without it, the preparer registered as `dataset`, else as the
    # experiment's name (experiments/__init__.py: resolve_preparer).
    source: PrepareSource | None = None
    dataset: str | None = None
    raw_dir: Path | None = None
    raw_text_path: Path | None = None
    records_path: Path | None = None
    # A Hugging Face datasets dataset instead of records_path: a local folder (resolved
    # against the config's folder when it exists there) or a name in the datasets cache.
    hf_dataset: str | None = None
    hf_dataset_subset: str | None = None
    hf_dataset_split: str = "train"
    format: RecordsSourceFormat | None = None
    chat_template: str | None = None
    dataset_dir: Path = Path("datasets")
    tokenizer: Literal["char", "tiktoken"] = "char"
    encoding: str = "gpt2"
    train_split: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9
    chunk_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    download_url: str | None = None
    # What source = "text" reads when no corpus is given (data/sources.py): a corpus
    # bundled with the package by name, or a file that is seeded into dataset_dir/input.txt.
    fallback_text: str | None = None
    seed: int = 1337
    speeches: SpeechesConfig = SpeechesConfig()


class ModelConfig(Section):
    """The from-scratch model's shape; `arch` picks GPT-2's block or Llama's (model/gpt.py)."""

    n_layer: PositiveInt = 4
    n_head: PositiveInt = 4
    n_embd: PositiveInt = 128
    block_size: PositiveInt = 64
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    bias: bool = False
    vocab_size: PositiveInt | None = None
    # "gpt2" stays the default so that configs written before "llama" existed keep
    # describing the model their checkpoints hold; the presets choose "llama".
    arch: Arch = "gpt2"
    rope_base: Annotated[float, Field(gt=1.0)] = 10000.0
    mlp_hidden: PositiveInt | None = None
    tie_embeddings: bool = True
    qk_norm: bool = False
    n_kv_head: PositiveInt | None = None


class DataConfig(Section):
    dataset_dir: Path = Path("datasets")
    train_bin: str = "train.bin"
    val_bin: str = "val.bin"
    meta_file: str = "meta.json"
    batch_size: PositiveInt = 12
    block_size: PositiveInt | None = None
    grad_accum_steps: PositiveInt = 1
    sampler: Literal["random", "sequential"] = "random"


class OptimConfig(Section):
    learning_rate: Annotated[float, Field(gt=0.0)] = 6e-4
    weight_decay: NonNegativeFloat = 0.1
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.95
    grad_clip: NonNegativeFloat = 1.0
    # "muon": Muon for the 2-D matrices inside the transformer blocks, AdamW for the rest.
    name: OptimizerName = "adamw"
    # Muon's own peak learning rate (name = "muon" only). Its update is orthogonalised, so
    # every step moves a matrix by about lr * sqrt(max(1, rows/cols)) in spectral norm,
    # whatever the gradient's size: 0.02 is what Keller Jordan's Muon, modded-nanogpt and
    # nanochat use with torch's default ("original") shape adjustment. The schedule scales
    # it like learning_rate.
    muon_learning_rate: Annotated[float, Field(gt=0.0)] = 0.02
    muon_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.95


class ScheduleConfig(Section):
    decay_lr: bool = True
    warmup_iters: NonNegativeInt = 100
    lr_decay_iters: PositiveInt = 2000
    min_lr: NonNegativeFloat = 6e-5


class RuntimeConfig(Section):
    out_dir: Path = Path("out")
    max_iters: NonNegativeInt = 2000
    eval_interval: PositiveInt = 250
    eval_iters: PositiveInt = 20
    log_interval: PositiveInt = 10
    eval_only: bool = False
    always_save_checkpoint: bool = False
    seed: int = 1337
    device: Device = "auto"
    dtype: DTypeChoice = "float32"
    compile: bool = False
    tensorboard_enabled: bool = True


class HFModelConfig(Section):
    model_name: str
    revision: str | None = None
    # auto: on only when the estimated activations would not fit the free memory.
    gradient_checkpointing: GradientCheckpointing = "auto"
    block_size: PositiveInt = 512
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    save_merged: bool = False
    # The dtype the frozen base weights are stored in; "auto" follows runtime.dtype.
    # LoRA weights and the optimizer always stay float32.
    dtype: DTypeChoice = "auto"


class PeftConfig(Section):
    enabled: bool = True
    r: PositiveInt = 8
    lora_alpha: PositiveInt = 16
    lora_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    extend_mlp_targets: bool = False


class TrainConfig(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    hf_model: HFModelConfig | None = None
    peft: PeftConfig | None = None

    @property
    def block_size(self) -> int:
        """The context length batches are cut to."""
        if self.data.block_size is not None:
            return self.data.block_size
        return self.hf_model.block_size if self.hf_model else self.model.block_size


class SampleSettings(Section):
    start: str = "\n"
    num_samples: PositiveInt = 1
    max_new_tokens: PositiveInt = 200
    temperature: NonNegativeFloat = 0.8
    top_k: NonNegativeInt = 200
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    require_adapters: bool = False
    stream: bool = True


class SampleConfig(Section):
    runtime_ref: Literal["train.runtime"] | None = None
    runtime: RuntimeConfig = RuntimeConfig()
    sample: SampleSettings = SampleSettings()


class OllamaConfig(Section):
    enabled: bool = False
    export_dir: Path = Path("export")
    model_name: str | None = None
    quant: str = "f16"
    template: str | None = None
    system: str | None = None
    stop: list[str] = Field(default_factory=list[str])
    convert_bin: str | None = None
    quant_bin: str | None = None
    create: bool = False
    checkpoint: Literal["best", "last", "final"] | None = None
    adapter_only: bool = False


class HFExportConfig(Section):
    """[export.hf]: a from-scratch GPT as a Hugging Face model folder (export/hf_folder.py)."""

    enabled: bool = False
    export_dir: Path = Path("export/hf")


class ExportConfig(Section):
    ollama: OllamaConfig = OllamaConfig()
    hf: HFExportConfig = HFExportConfig()


class ExperimentConfig(Section):
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    export: ExportConfig = ExportConfig()

    @property
    def uses_hf_model(self) -> bool:
        """True when the config asks for the Hugging Face fine-tuning pipeline."""
        return self.train.hf_model is not None


# --- the schema's keys --------------------------------------------------------------------


def section_class(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds (`HFModelConfig | None` holds HFModelConfig), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = section_class(arg)
            if found is not None:
                return found
    return None


def leaf_fields(
    model: type[BaseModel] = ExperimentConfig, prefix: str = ""
) -> dict[str, FieldInfo]:
    """Every key a config file can set, dotted (`train.optim.learning_rate`), with its field."""
    leaves: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        sub = section_class(info.annotation)
        if sub is not None:
            leaves |= leaf_fields(sub, f"{prefix}{name}.")
        else:
            leaves[f"{prefix}{name}"] = info
    return leaves
