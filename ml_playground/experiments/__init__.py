"""The experiment registry: folders with a config.toml, and the preparers they register.

An experiment is a folder `ml_playground/experiments/<name>/` holding `config.toml` and
`Readme.md`. Its `[prepare] source` names a built-in source (sources.py); data no source
reads gets a `prepare.py` that registers a preparer with `@register("<name>")`.
Discovery imports every experiment folder's prepare.py, so adding a folder is all it takes
(no central list). `resolve_preparer` says which one runs. A folder elsewhere on disk is
an experiment too when the CLI is given its path, which is how copies and tests run
outside the source tree.

Names are looked up in the user's folders before the bundled ones: the folder named by
$ML_PLAYGROUND_EXPERIMENTS, then ./experiments/ of the working directory, then this
package. An installed package is read-only in spirit (site-packages), so `new` writes
into the user's folders unless the package is a source checkout.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import re
import shutil
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ml_playground import run_folder
from ml_playground.config import ExperimentConfig, PrepareConfig, PrepareSource
from ml_playground.config_loader import load_config, read_toml
from ml_playground.data import dataset_folder
from ml_playground.errors import ConfigError, ExperimentNotFoundError, UserError

EXPERIMENTS_ROOT = Path(__file__).parent
USER_EXPERIMENTS_ENV = "ML_PLAYGROUND_EXPERIMENTS"
LOCAL_EXPERIMENTS = "experiments"
# A source checkout has the project file two levels above this package folder.
SOURCE_CHECKOUT = (EXPERIMENTS_ROOT.parents[1] / "pyproject.toml").is_file()
CONFIG_FILE = "config.toml"
README_FILE = "Readme.md"
LEGACY_PREPARERS_MODULE = "ml_playground.datasets"
TEMPLATE_DIR = EXPERIMENTS_ROOT / "_template"
TEMPLATE_PLACEHOLDER = "{{name}}"
EXPERIMENT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class PrepareContext:
    """What a preparer receives: which experiment, where it lives, its config, and whether
    to prepare again even when the dataset is up to date (`prepare --force`)."""

    name: str
    directory: Path
    config: ExperimentConfig
    force: bool = False


Preparer = Callable[[PrepareContext], None]
PREPARERS: dict[str, Preparer] = {}


def register(name: str) -> Callable[[Preparer], Preparer]:
    """Register `fn` as the preparer for experiment (or dataset) `name`."""

    def decorator(fn: Preparer) -> Preparer:
        # Last registration wins: a copied experiment folder's own prepare.py is loaded
        # after discovery and must override the packaged preparer of the same name.
        PREPARERS[name] = fn
        return fn

    return decorator


@dataclass(frozen=True)
class Experiment:
    name: str
    directory: Path

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_FILE

    @property
    def description(self) -> str:
        """The first prose line of the experiment's Readme; what is wrong with it where it
        cannot be read, so `list` still shows every experiment and marks this one."""
        readme = self.directory / README_FILE
        if not readme.is_file():
            return ""
        try:
            text = readme.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return f"({README_FILE} is not UTF-8; convert it to UTF-8)"
        except OSError as exc:
            return f"({README_FILE} cannot be read: {exc.strerror or exc})"
        for line in text.splitlines():
            text = line.strip()
            if text and not text.startswith(("#", "<!--", "|", "-", "```")):
                return text
        return ""


def search_roots() -> list[Path]:
    """Where names are looked up, first match wins: $ML_PLAYGROUND_EXPERIMENTS,
    ./experiments/, the bundled experiments."""
    roots: list[Path] = []
    configured = os.environ.get(USER_EXPERIMENTS_ENV, "").strip()
    if configured:
        roots.append(Path(configured).expanduser())
    roots += [Path.cwd() / LOCAL_EXPERIMENTS, EXPERIMENTS_ROOT]
    unique: dict[Path, Path] = {}
    for root in roots:
        unique.setdefault(root.resolve(), root)
    return list(unique.values())


def new_experiments_root() -> Path:
    """Where `new NAME` creates NAME/ when no --dir is given."""
    configured = os.environ.get(USER_EXPERIMENTS_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return EXPERIMENTS_ROOT if SOURCE_CHECKOUT else Path.cwd() / LOCAL_EXPERIMENTS


def list_experiments(root: Path | None = None) -> list[Experiment]:
    """Every folder with a config.toml below `root` (default: every search root, a name
    found earlier hiding a later one), by name; `_`-folders are templates."""
    found: dict[str, Experiment] = {}
    for folder in [root] if root is not None else search_roots():
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            usable = path.is_dir() and not path.name.startswith(("_", "."))
            if usable and (path / CONFIG_FILE).is_file():
                found.setdefault(path.name, Experiment(name=path.name, directory=path))
    return sorted(found.values(), key=lambda experiment: experiment.name)


def find_experiment(name_or_path: str, root: Path | None = None) -> Experiment:
    """Look an experiment up by folder name in the search roots, or take a folder path."""
    candidate = Path(name_or_path).expanduser()
    looks_like_path = candidate.is_absolute() or len(candidate.parts) > 1 or name_or_path == "."
    if looks_like_path or (candidate.is_dir() and (candidate / CONFIG_FILE).is_file()):
        directory = candidate.resolve()
        if not (directory / CONFIG_FILE).is_file():
            raise ExperimentNotFoundError(
                f"no {CONFIG_FILE} in experiment folder {directory}; "
                "create one or run `ml-playground new NAME`"
            )
        return Experiment(name=directory.name, directory=directory)
    experiments = list_experiments(root)
    for experiment in experiments:
        if experiment.name == name_or_path:
            return experiment
    known = ", ".join(e.name for e in experiments) or "none"
    raise ExperimentNotFoundError(
        f"unknown experiment {name_or_path!r}; known experiments: {known} "
        "(or pass a folder path that holds a config.toml)"
    )


def discover(root: Path = EXPERIMENTS_ROOT) -> Mapping[str, Preparer]:
    """Import every experiment's prepare module so its `@register` runs."""
    for info in pkgutil.iter_modules([str(root)]):
        folder = root / info.name
        if not info.ispkg or info.name.startswith("_") or not (folder / "prepare.py").is_file():
            continue
        if root.resolve() == EXPERIMENTS_ROOT.resolve():
            importlib.import_module(f"{__name__}.{info.name}.prepare")
        else:
            load_prepare_module(folder)
    return PREPARERS


def load_prepare_module(directory: Path) -> ModuleType | None:
    """Import the prepare.py of an experiment folder that lives outside the package."""
    path = directory / "prepare.py"
    if directory.resolve().parent == EXPERIMENTS_ROOT.resolve() or not path.is_file():
        return None
    # Keyed by the full path: two copies with the same folder name are different modules.
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    module_name = f"ml_playground_user_experiment_{directory.name}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def all_preparers() -> Mapping[str, Preparer]:
    """Preparers from a legacy `ml_playground.datasets` package, then the experiments."""
    merged: dict[str, Preparer] = {}
    try:
        legacy = importlib.import_module(LEGACY_PREPARERS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != LEGACY_PREPARERS_MODULE:
            raise
    else:
        merged.update(getattr(legacy, "PREPARERS", {}))
    merged.update(discover())
    return merged


def resolve_preparer(
    experiment: Experiment, prepare: PrepareConfig, config_path: Path | None = None
) -> Preparer:
    """The preparer that prepares `experiment`, first match wins:

    1. `[prepare] source`: that built-in source (sources.py). An experiment folder that
       also holds a prepare.py is refused: its author wrote code to prepare it.
    2. The preparer registered as `[prepare] dataset`, else as the experiment's name: the
       folder's own prepare.py, then the packaged experiments', then a legacy
       `ml_playground.datasets.PREPARERS`. (`source` and `dataset` together are refused
       when the config loads.)
    """
    config_path = config_path or experiment.config_path
    own = experiment.directory / "prepare.py"
    if prepare.source is not None:
        if own.is_file():
            raise ConfigError(
                f"{config_path} sets prepare.source = {prepare.source!r} and {own} prepares "
                "the experiment too; remove the key to run prepare.py, or delete prepare.py "
                "to use the built-in source"
            )
        from ml_playground.experiments.sources import BUILT_IN_SOURCES  # noqa: PLC0415 - sources imports this module

        return BUILT_IN_SOURCES[prepare.source]
    preparers = dict(all_preparers())
    if load_prepare_module(experiment.directory) is not None:
        preparers.update(PREPARERS)
    name = prepare.dataset or experiment.name
    preparer = preparers.get(name)
    if preparer is None:
        known = ", ".join(sorted(preparers)) or "none"
        asked = (
            f"(prepare.dataset in {config_path})"
            if prepare.dataset
            else f"and no prepare.source in {config_path}"
        )
        raise ExperimentNotFoundError(
            f"no preparer registered as {name!r} {asked}; {_source_hint(name)}registered: {known}"
        )
    return preparer


def _source_hint(name: str) -> str:
    """What to set instead: the source of the experiment `name` where it names one (its
    preparer became a built-in source; a user's copy first, then the packaged one), else
    the choices."""
    choices = ", ".join(repr(source) for source in typing.get_args(PrepareSource))
    source: object = None
    for root in (None, EXPERIMENTS_ROOT):
        try:
            settings: object = read_toml(find_experiment(name, root).config_path).get("prepare")
        except UserError:
            continue
        if isinstance(settings, Mapping):
            source = typing.cast(Mapping[str, object], settings).get("source")
        if isinstance(source, str):
            break
    if isinstance(source, str):
        return (
            f"experiment {name!r} prepares with prepare.source = {source!r}: set that (and "
            "its source's keys) instead; "
        )
    return f"set prepare.source to one of {choices}, or register a preparer in a prepare.py; "


@dataclass(frozen=True)
class ExperimentState:
    """What `list` shows of an experiment: where it lives and how far it got."""

    experiment: Experiment
    state: tuple[str, ...]


def experiment_states() -> list[ExperimentState]:
    states: list[ExperimentState] = []
    for experiment in list_experiments():
        try:
            config = load_config(experiment.config_path, experiment.directory).config
        except UserError:
            states.append(ExperimentState(experiment, ("config has an error",)))
            continue
        state: list[str] = []
        if (config.prepare.dataset_dir / dataset_folder.META_FILE).is_file():
            state.append("prepared")
        if run_folder.holds_weights(config.train.runtime.out_dir):
            state.append("trained")
        states.append(ExperimentState(experiment, tuple(state)))
    return states


def new_experiment(name: str, parent: Path | None) -> Path:
    """Copy the template into `parent/name`, filling in the experiment's name; without a
    parent, into the folder `new_experiments_root` names."""
    if not EXPERIMENT_NAME.match(name):
        raise ConfigError(
            f"invalid experiment name {name!r}: use lowercase letters, digits and _, "
            "starting with a letter"
        )
    target = (parent or new_experiments_root()) / name
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another name or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(TEMPLATE_DIR, staging, ignore=shutil.ignore_patterns("__pycache__"))
    for path in staging.rglob("*"):
        if path.is_file() and path.suffix in {".py", ".toml", ".md"}:
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace(TEMPLATE_PLACEHOLDER, name), encoding="utf-8")
    staging.replace(target)
    return target
