"""Typed experiment configuration: TOML files in, one frozen `ExperimentConfig` out.

Loading is layered. `experiments/default_config.toml` sits under the experiment's own
`config.toml` (or the file given with `--exp-config`), and the experiment wins key by key.
Relative paths are resolved against the directory of the file that set them, so a copied
experiment folder works wherever it lands; path keys that no file sets default to
folders inside the experiment directory. Every key remembers which layer set it, so the
effective config can be printed with its origins and every error can name its file.
"""

from __future__ import annotations

import difflib
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ml_playground.artifacts import read_user_file
from ml_playground.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).parent / "experiments" / "default_config.toml"


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


class SpeechesConfig(Section):
    """[prepare.speeches]: which speeches the records dataset keeps and how it writes them."""

    add_structure_tokens: bool = False
    doc_separator: str = "\n\n"
    skip_chair: bool = True
    skip_interjections: bool = True
    periods: list[int] = Field(default_factory=list[int])
    parties: list[str] = Field(default_factory=list[str])
    date_from: str | None = None
    date_to: str | None = None
    max_records: PositiveInt | None = None


class PrepareConfig(Section):
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
    tokenizer: Literal["char", "tiktoken", "hf"] = "char"
    encoding: str = "gpt2"
    train_split: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9
    chunk_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    download_url: str | None = None
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


# Path keys that no file sets live inside the experiment folder, not the working directory.
EXPERIMENT_PATH_DEFAULTS: Mapping[str, str] = {
    "prepare.dataset_dir": "datasets",
    "train.runtime.out_dir": "out",
    "sample.runtime.out_dir": "out",
    "export.ollama.export_dir": "export",
    "export.hf.export_dir": "export/hf",
}

BUILT_IN = "built-in"


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where each key came from (dotted key -> layer label)."""

    config: ExperimentConfig
    config_path: Path
    origins: Mapping[str, str] = field(default_factory=dict[str, str])

    def origin_of(self, key: str) -> str:
        return self.origins.get(key, BUILT_IN)

    def describe(self) -> list[str]:
        """One `key = value  (origin)` line per leaf of the effective config."""
        leaves = _flatten(self.config.model_dump(mode="json"))
        return [f"{key} = {value!r}  ({self.origin_of(key)})" for key, value in leaves.items()]

    def to_toml(self) -> str:
        """The effective config as TOML that loads back into the same config, each key
        followed by where it came from. Paths are absolute, so the text can be saved
        anywhere and passed as --exp-config."""
        tables: dict[str, list[str]] = {}
        for key, value in _flatten(self.config.model_dump(mode="json")).items():
            table, _, leaf = key.rpartition(".")
            origin = self.origin_of(key)
            if value is None:
                # TOML has no null: an unset key is left out, which loads back as unset.
                line = f"# {leaf} is unset ({origin})"
            else:
                line = f"{tomli_w.dumps({leaf: value}).strip()}  # {origin}"
            tables.setdefault(table, []).append(line)
        top = tables.pop("", [])
        blocks = ["\n".join(top)] if top else []
        blocks += [f"[{table}]\n" + "\n".join(lines) for table, lines in tables.items()]
        return "\n\n".join(blocks) + "\n"


def load_config(
    config_path: Path,
    experiment_dir: Path,
    defaults_path: Path | None = DEFAULT_CONFIG_PATH,
) -> LoadedConfig:
    """Read, layer, resolve and validate an experiment's configuration."""
    config_path = config_path.resolve()
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    layers: list[tuple[Path, str]] = []
    if defaults_path is not None and defaults_path.is_file():
        layers.append((defaults_path.resolve(), "default"))
    layers.append((config_path, "experiment"))
    files: dict[str, Path] = {}
    for path, label in layers:
        raw = _resolve_paths(_move_flat_speech_keys(read_toml(path), path), base=path.parent)
        _merge_into(merged, raw, origins, label)
        files[label] = path
    _apply_experiment_path_defaults(merged, experiment_dir.resolve())
    _inherit(merged, origins, "train.data.dataset_dir", "prepare.dataset_dir")
    _inherit_sample_runtime(merged, origins)

    def file_of(key: str) -> Path:
        """The file that set `key`; else the first file that set a key in its section."""
        parts = key.split(".")
        for depth in range(len(parts), 0, -1):
            prefix = ".".join(parts[:depth])
            label = origins.get(prefix) or next(
                (origins[k] for k in origins if k.startswith(prefix + ".")), None
            )
            if label is not None:
                return files.get(label, config_path)
        return config_path

    try:
        config = ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise _config_error(exc, file_of) from None
    _check_rules(config, file_of)
    return LoadedConfig(config=config, config_path=config_path, origins=origins)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; syntax errors name the file and the line."""
    remedy = "check the experiment's folder or the path given to --exp-config"
    text = read_user_file(path, what="config file", error=ConfigError, remedy=remedy)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None


# --- keys that moved ---------------------------------------------------------------------

# The speech keys lived in [prepare] before [prepare.speeches] existed; that spelling
# still loads, with a note once per file and key.
FLAT_SPEECH_KEYS = frozenset(SpeechesConfig.model_fields)
_noted_flat_keys: set[tuple[Path, str]] = set()


def _move_flat_speech_keys(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """`[prepare] skip_chair = ...` read as `[prepare.speeches] skip_chair = ...`."""
    prepare = raw.get("prepare")
    if not isinstance(prepare, dict):
        return raw  # absent, or not a table: validation names it
    prepare = typing.cast(dict[str, Any], prepare)
    flat = sorted(FLAT_SPEECH_KEYS.intersection(prepare))
    if not flat:
        return raw
    speeches = prepare.setdefault("speeches", {})
    if not isinstance(speeches, dict):
        return raw
    speeches = typing.cast(dict[str, Any], speeches)
    for key in flat:
        if key in speeches:
            raise ConfigError(
                f"prepare.{key} and prepare.speeches.{key} are both set in {path}; "
                f"keep only {key} under [prepare.speeches]"
            )
        speeches[key] = prepare.pop(key)
        if (path, key) not in _noted_flat_keys:
            _noted_flat_keys.add((path, key))
            print(
                f"note: prepare.{key} in {path} is deprecated; move it to [prepare.speeches]"
                f" as {key}",
                file=sys.stderr,
            )
    return raw


# --- layering ---------------------------------------------------------------------------


def _merge_into(
    target: dict[str, Any], layer: Mapping[str, Any], origins: dict[str, str], label: str
) -> None:
    for key, leaf in _flatten(layer).items():
        _set_dotted(target, key, leaf)
        origins[key] = label


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(_flatten(typing.cast(Mapping[str, Any], value), dotted + "."))
        else:
            leaves[dotted] = value
    return leaves


def _get_dotted(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = typing.cast(Mapping[str, Any], node)[part]
    return node


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            # A plain value where a section belongs stays as it is, so that validation
            # reports it instead of it being silently replaced by a table.
            return
        node = typing.cast(dict[str, Any], child)
    node[leaf] = value


def _apply_experiment_path_defaults(merged: dict[str, Any], experiment_dir: Path) -> None:
    for key, relative in EXPERIMENT_PATH_DEFAULTS.items():
        if _get_dotted(merged, key) is None:
            _set_dotted(merged, key, experiment_dir / relative)


def _inherit(merged: dict[str, Any], origins: dict[str, str], key: str, source: str) -> None:
    """Let `key` default to the value of `source` when no file sets it."""
    if key not in origins:
        _set_dotted(merged, key, _get_dotted(merged, source))
        origins[key] = f"from {source}"


def _inherit_sample_runtime(merged: dict[str, Any], origins: dict[str, str]) -> None:
    """`sample.runtime_ref = "train.runtime"`: sampling starts from train's runtime."""
    if _get_dotted(merged, "sample.runtime_ref") != "train.runtime":
        return
    train_runtime = _get_dotted(merged, "train.runtime")
    if not isinstance(train_runtime, Mapping):
        return
    sample_runtime = _get_dotted(merged, "sample.runtime")
    if sample_runtime is not None and not isinstance(sample_runtime, Mapping):
        return  # not a table: validation names it
    overrides: dict[str, Any] = (
        dict(typing.cast(Mapping[str, Any], sample_runtime))
        if isinstance(sample_runtime, Mapping)
        else {}
    )
    inherited = dict(typing.cast(Mapping[str, Any], train_runtime))
    for key, value in inherited.items():
        sample_key = f"sample.runtime.{key}"
        explicitly_set = sample_key in origins
        if not explicitly_set:
            overrides[key] = value
            origins[sample_key] = f"from train.runtime.{key}"
    _set_dotted(merged, "sample.runtime", overrides)


# --- path resolution --------------------------------------------------------------------


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def _is_path(annotation: Any) -> bool:
    if annotation is Path:
        return True
    return typing.get_origin(annotation) in (Union, types.UnionType) and Path in typing.get_args(
        annotation
    )


def _path_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        sub = _model_class(info.annotation)
        if sub is not None:
            keys |= _path_keys(sub, f"{prefix}{name}.")
        elif _is_path(info.annotation):
            keys.add(f"{prefix}{name}")
    return keys


PATH_KEYS = frozenset(_path_keys(ExperimentConfig))
FILE_PROMPT_PREFIX = "FILE:"
FILE_KEYS = frozenset({"sample.sample.start", "prepare.chat_template"})
"""Text keys whose value may instead name a file, as FILE:<path>."""
PATH_OR_NAME_KEYS = frozenset({"prepare.hf_dataset", "train.hf_model.model_name"})
"""Keys naming a local folder when one is there, else something else (a hub name)."""
PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
"""How a value of PATH_OR_NAME_KEYS says it is a path even before the folder exists (an
export not yet run): hub names never start so."""


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Turn path strings into absolute `Path`s anchored at the config file's folder."""
    resolved: dict[str, Any] = {}
    for key, value in _flatten(raw).items():
        anchored: Any = value
        if key in PATH_KEYS and isinstance(value, str):
            anchored = _anchor(value, base)
        elif key in FILE_KEYS and isinstance(value, str) and value.startswith(FILE_PROMPT_PREFIX):
            anchored = FILE_PROMPT_PREFIX + str(_anchor(value[len(FILE_PROMPT_PREFIX) :], base))
        elif key in PATH_OR_NAME_KEYS and isinstance(value, str) and _names_a_path(value, base):
            anchored = str(_anchor(value, base))
        _set_dotted(resolved, key, anchored)
    return resolved


def _names_a_path(value: str, base: Path) -> bool:
    return value.startswith(PATH_PREFIXES) or _anchor(value, base).exists()


def _anchor(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


# --- validation messages ----------------------------------------------------------------


def _config_error(exc: ValidationError, file_of: typing.Callable[[str], Path]) -> ConfigError:
    """Translate pydantic's first error into one line naming the key and its file."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
    key = ".".join(loc)
    file = file_of(key)
    if error["type"] == "extra_forbidden":
        parent = _section_model(loc[:-1])
        valid = list(parent.model_fields) if parent else []
        hint = difflib.get_close_matches(loc[-1], valid, n=1)
        suggestion = f"; did you mean {hint[0]}?" if hint else f"; valid keys: {', '.join(valid)}"
        return ConfigError(f"unknown key {key} in {file}{suggestion}")
    if error["type"] == "missing":
        return ConfigError(f"missing required key {key} in {file}; add it to the config")
    got = error.get("input")
    return ConfigError(
        f"invalid value for {key} in {file}: {error['msg'].lower()}; got {got!r}"
        f" ({type(got).__name__})"
    )


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        info = model.model_fields.get(part)
        sub = _model_class(info.annotation) if info else None
        if sub is None:
            return None
        model = sub
    return model


def _check_rules(config: ExperimentConfig, file_of: typing.Callable[[str], Path]) -> None:
    """Rules that relate two keys; the message names both and the file of the first."""
    train = config.train

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"invalid config in {file_of(key)}: {message}")

    context_key, context = (
        ("train.hf_model.block_size", train.hf_model.block_size)
        if train.hf_model
        else ("train.model.block_size", train.model.block_size)
    )
    if train.data.block_size is not None:
        require(
            train.data.block_size <= context,
            "train.data.block_size",
            f"train.data.block_size = {train.data.block_size} must be <= {context_key} = {context}",
        )
    require(
        train.schedule.warmup_iters <= train.schedule.lr_decay_iters,
        "train.schedule.warmup_iters",
        f"train.schedule.warmup_iters = {train.schedule.warmup_iters} must be <= "
        f"train.schedule.lr_decay_iters = {train.schedule.lr_decay_iters}",
    )
    require(
        train.schedule.min_lr <= train.optim.learning_rate,
        "train.schedule.min_lr",
        f"train.schedule.min_lr = {train.schedule.min_lr} must be <= "
        f"train.optim.learning_rate = {train.optim.learning_rate}",
    )
    require(
        train.model.n_embd % train.model.n_head == 0,
        "train.model.n_embd",
        f"train.model.n_embd = {train.model.n_embd} must be divisible by "
        f"train.model.n_head = {train.model.n_head}",
    )
    model = train.model
    if model.arch == "llama":
        require(
            (model.n_embd // model.n_head) % 2 == 0,
            "train.model.n_embd",
            f"train.model.n_embd / n_head = {model.n_embd // model.n_head} must be even for "
            "arch = 'llama': rotary embeddings rotate pairs of values",
        )
        require(
            model.n_kv_head is None or model.n_head % model.n_kv_head == 0,
            "train.model.n_kv_head",
            f"train.model.n_head = {model.n_head} must be a multiple of "
            f"train.model.n_kv_head = {model.n_kv_head}",
        )
        require(
            not model.bias,
            "train.model.bias",
            "train.model.bias = true is not available with arch = 'llama' (it has no biases); "
            "remove the key",
        )
    require(
        train.optim.name != "muon" or train.hf_model is None,
        "train.optim.name",
        "train.optim.name = 'muon' is for GPTs trained from scratch, not for LoRA adapters "
        "on [train.hf_model]; use name = 'adamw'",
    )
    require(
        train.peft is None or train.hf_model is not None,
        "train.peft",
        "[train.peft] needs a [train.hf_model] section naming the base model",
    )
    require(
        config.prepare.records_path is None or config.prepare.hf_dataset is None,
        "prepare.hf_dataset",
        "set either prepare.records_path (JSONL files) or prepare.hf_dataset (a datasets "
        "dataset), not both",
    )
