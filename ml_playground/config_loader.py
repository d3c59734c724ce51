"""Reading an experiment's TOML files into one frozen `ExperimentConfig` (schema: config.py).

Loading is layered. `experiments/default_config.toml` sits under the experiment's own
`config.toml` (or the file given with `--exp-config`), and the experiment wins key by key.
Relative paths are resolved against the directory of the file that set them, so a copied
experiment folder works wherever it lands; path keys that no file sets default to
folders inside the experiment directory. Every key remembers which layer set it, so the
effective config can be printed with its origins and every error can name its file.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import tomli_w
from pydantic import BaseModel, ValidationError

from ml_playground.artifacts import read_user_file
from ml_playground.config import (
    FILE_PROMPT_PREFIX,
    PATH_PREFIXES,
    ExperimentConfig,
    leaf_fields,
    section_class,
)
from ml_playground.config_rules import check_rules
from ml_playground.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).parent / "experiments" / "default_config.toml"

# Path keys that no file sets live inside the experiment folder, not the working directory.
EXPERIMENT_PATH_DEFAULTS: Mapping[str, str] = {
    "prepare.dataset_dir": "datasets",
    "train.runtime.out_dir": "out",
    "sample.runtime.out_dir": "out",
    "export.ollama.export_dir": "export",
    "export.hf.export_dir": "export/hf",
}

BUILT_IN = "built-in"
EXPERIMENT_CONFIG = "config.toml"
# How the experiment gets its data: a file given to --exp-config that names neither a
# source nor a dataset takes these from the experiment folder's config.toml, so an override
# that changes only training settings (configs/*_cpu.toml) prepares what its experiment does.
SOURCE_KEYS = ("prepare.source", "prepare.fallback_text", "prepare.speeches.suffixes")


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
        raw = _resolve_paths(read_toml(path), base=path.parent)
        _merge_into(merged, raw, origins, label)
        files[label] = path
    _apply_experiment_path_defaults(merged, experiment_dir.resolve())
    files |= _inherit_source(merged, origins, config_path, experiment_dir.resolve())
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
    check_rules(config, file_of)
    return LoadedConfig(config=config, config_path=config_path, origins=origins)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; syntax errors name the file and the line."""
    remedy = "check the experiment's folder or the path given to --exp-config"
    text = read_user_file(path, what="config file", error=ConfigError, remedy=remedy)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None


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


def _inherit_source(
    merged: dict[str, Any], origins: dict[str, str], config_path: Path, experiment_dir: Path
) -> dict[str, Path]:
    """SOURCE_KEYS from the experiment's own config.toml, where `config_path` replaces it
    and sets neither prepare.source nor prepare.dataset; the file they came from, by label."""
    own = experiment_dir / EXPERIMENT_CONFIG
    chooses = {"prepare.source", "prepare.dataset"} & origins.keys()
    if config_path == own or chooses or not own.is_file():
        return {}
    label = f"from {own}"
    raw = _resolve_paths(read_toml(own), base=own.parent)
    for key in SOURCE_KEYS:
        value = _get_dotted(raw, key)
        if value is not None and key not in origins:
            _set_dotted(merged, key, value)
            origins[key] = label
    return {label: own}


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


def _is_path(annotation: Any) -> bool:
    if annotation is Path:
        return True
    return typing.get_origin(annotation) in (Union, types.UnionType) and Path in typing.get_args(
        annotation
    )


PATH_KEYS = frozenset(key for key, info in leaf_fields().items() if _is_path(info.annotation))
FILE_KEYS = frozenset({"sample.sample.start", "prepare.chat_template"})
"""Text keys whose value may instead name a file, as FILE:<path>."""
PATH_OR_NAME_KEYS = frozenset(
    {"prepare.hf_dataset", "prepare.fallback_text", "train.hf_model.model_name"}
)
"""Keys naming a local folder when one is there, else something else (a hub name)."""


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
        hint = difflib.get_close_matches(loc[-1], valid, n=1) or _in_a_subsection(loc)
        suggestion = f"; did you mean {hint[0]}?" if hint else f"; valid keys: {', '.join(valid)}"
        return ConfigError(f"unknown key {key} in {file}{suggestion}")
    if error["type"] == "missing":
        return ConfigError(f"missing required key {key} in {file}; add it to the config")
    if error["type"] == "value_error":
        # A validator's own sentence, which names the key, the value and the fix.
        sentence = error["msg"].removeprefix("Value error, ")
        return ConfigError(f"invalid config in {file}: {sentence}")
    got = error.get("input")
    return ConfigError(
        f"invalid value for {key} in {file}: {error['msg'].lower()}; got {got!r}"
        f" ({type(got).__name__})"
    )


def _in_a_subsection(loc: list[str]) -> list[str]:
    """`periods` set in [prepare] belongs in [prepare.speeches]: `prepare.speeches.periods`."""
    parent = _section_model(loc[:-1])
    for name, info in parent.model_fields.items() if parent else ():
        sub = section_class(info.annotation)
        if sub is not None and loc[-1] in sub.model_fields:
            return [".".join([*loc[:-1], name, loc[-1]])]
    return []


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        info = model.model_fields.get(part)
        sub = section_class(info.annotation) if info else None
        if sub is None:
            return None
        model = sub
    return model
