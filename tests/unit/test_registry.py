"""The experiment registry: discovery, `@register`, lookup by name or folder, preparers.

Experiments used here are real folders in tmp_path with a config.toml and, where needed,
a prepare.py. Each test gets a unique experiment name (the registry is process-global and
caches user prepare modules by folder name) and the registry is restored afterwards.
"""

from __future__ import annotations

import json
import sys
import types
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_playground import cli, pipeline
from ml_playground.config import PrepareConfig, PrepareSource
from ml_playground.config_loader import load_config
from ml_playground.errors import ConfigError, ExperimentNotFoundError, UserError
from ml_playground.experiments import (
    EXPERIMENTS_ROOT,
    LEGACY_PREPARERS_MODULE,
    PREPARERS,
    PrepareContext,
    Preparer,
    all_preparers,
    discover,
    find_experiment,
    list_experiments,
    new_experiment,
    register,
    resolve_preparer,
)
from ml_playground.experiments.sources import BUILT_IN_SOURCES
from tests.experiments import scripted_experiment
from tests.toml_helpers import Settings, write_toml

USER_MODULE_PREFIX = "ml_playground_user_experiment_"
PACKAGED_MODULE_PREFIX = "ml_playground.experiments."

# A preparer as an experiment author writes it: it leaves a file behind as proof it ran.
PREPARE_PY = """\
from ml_playground.experiments import PrepareContext, register


@register("{name}")
def prepare(ctx: PrepareContext) -> None:
    (ctx.directory / "prepared_by.txt").write_text("{marker}", encoding="utf-8")
"""


@pytest.fixture(autouse=True)
def isolated_registry() -> Iterator[None]:
    """Undo the registrations and user prepare modules a test adds to the process.

    Registrations made by packaged experiments stay: their modules stay imported, so
    a later `discover()` in this process would not register them again.
    """
    preparers = dict(PREPARERS)
    modules = set(sys.modules)
    yield
    for name, preparer in list(PREPARERS.items()):
        packaged = getattr(preparer, "__module__", "").startswith(PACKAGED_MODULE_PREFIX)
        if name not in preparers and not packaged:
            del PREPARERS[name]
    PREPARERS.update(preparers)
    for name in set(sys.modules) - modules:
        if name.startswith(USER_MODULE_PREFIX):
            del sys.modules[name]


@pytest.fixture(autouse=True)
def empty_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative names are checked against the cwd first; keep that empty and private."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def make_experiment(
    parent: Path, name: str, config: Settings | None = None, prepare_marker: str | None = None
) -> Path:
    source = None if prepare_marker is None else PREPARE_PY.format(name=name, marker=prepare_marker)
    return scripted_experiment(parent, name, config, source)


def run_prepare_step(folder: Path) -> None:
    """The prepare step as the CLI runs it: find, load, resolve the preparer, call it."""
    experiment = find_experiment(str(folder))
    loaded = load_config(experiment.config_path, experiment.directory, defaults_path=None)
    pipeline.prepare(experiment, loaded)


def recorder(calls: list[PrepareContext]) -> Preparer:
    def preparer(ctx: PrepareContext) -> None:
        calls.append(ctx)

    return preparer


# --- discovery and registration ------------------------------------------------------------


def test_discovery_registers_every_packaged_experiment_with_a_prepare_py() -> None:
    on_disk = {
        path.parent.name
        for path in EXPERIMENTS_ROOT.glob("*/prepare.py")
        if not path.parent.name.startswith("_")
    }

    registered = set(discover())

    assert on_disk <= registered
    assert "_template" not in registered
    assert "{{name}}" not in registered, "the template's placeholder must not be registered"


def test_packaged_experiment_folders_are_importable_packages() -> None:
    # discovery walks packages; a folder without __init__.py would be silently skipped
    missing = [
        path.parent.name
        for path in EXPERIMENTS_ROOT.glob("*/prepare.py")
        if not (path.parent / "__init__.py").is_file()
    ]

    assert missing == []


def test_register_adds_the_function_under_its_name_and_returns_it() -> None:
    name = unique("corpus")
    calls: list[PrepareContext] = []
    preparer = recorder(calls)

    returned = register(name)(preparer)

    assert returned is preparer
    assert PREPARERS[name] is preparer


def test_last_registration_of_a_name_wins() -> None:
    name = unique("corpus")
    first, second = recorder([]), recorder([])

    register(name)(first)
    register(name)(second)

    assert PREPARERS[name] is second


def test_discover_imports_prepare_modules_from_the_root_it_is_given(tmp_path: Path) -> None:
    name = unique("rooted")
    root = tmp_path / "experiments"
    folder = make_experiment(root, name, prepare_marker="rooted")
    (folder / "__init__.py").write_text("", encoding="utf-8")

    assert name in discover(root)


# --- finding experiments -------------------------------------------------------------------


def test_list_experiments_takes_folders_with_a_config_and_skips_templates(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    make_experiment(root, "beta")
    make_experiment(root, "alpha")
    make_experiment(root, "_template")
    (root / "notes").mkdir()  # no config.toml: not an experiment

    assert [e.name for e in list_experiments(root)] == ["alpha", "beta"]


def test_find_experiment_by_name(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    folder = make_experiment(root, "alpha")

    experiment = find_experiment("alpha", root)

    assert experiment.name == "alpha"
    assert experiment.directory == folder
    assert experiment.config_path == folder / "config.toml"


def test_find_experiment_by_absolute_folder_path(tmp_path: Path) -> None:
    folder = make_experiment(tmp_path / "anywhere", "copied")

    experiment = find_experiment(str(folder), root=tmp_path / "no_registered_experiments")

    assert experiment.name == "copied"
    assert experiment.directory == folder.resolve()


def test_find_experiment_by_relative_folder_path(empty_working_directory: Path) -> None:
    folder = make_experiment(empty_working_directory / "runs", "copied")

    experiment = find_experiment("runs/copied")

    assert experiment.directory == folder.resolve()


def test_find_experiment_takes_a_folder_in_the_working_directory_by_its_name(
    empty_working_directory: Path, tmp_path: Path
) -> None:
    folder = make_experiment(empty_working_directory, "local")

    experiment = find_experiment("local", root=tmp_path / "no_registered_experiments")

    assert experiment.directory == folder.resolve()


def test_find_experiment_with_dot_means_the_working_directory(
    empty_working_directory: Path,
) -> None:
    write_toml(empty_working_directory / "config.toml", {})

    assert find_experiment(".").directory == empty_working_directory.resolve()


def test_folder_without_config_is_not_an_experiment(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()

    with pytest.raises(ExperimentNotFoundError) as caught:
        find_experiment(str(folder))

    assert f"no config.toml in experiment folder {folder.resolve()}" in str(caught.value)
    assert "ml-playground new" in str(caught.value)


def test_unknown_experiment_error_lists_the_known_names(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    make_experiment(root, "alpha")
    make_experiment(root, "beta")
    make_experiment(root, "_template")

    with pytest.raises(ExperimentNotFoundError) as caught:
        find_experiment("alpah", root)

    message = str(caught.value)
    assert "unknown experiment 'alpah'" in message
    assert "known experiments: alpha, beta" in message
    assert "_template" not in message
    assert isinstance(caught.value, UserError)


def test_readme_first_prose_line_is_the_description(tmp_path: Path) -> None:
    folder = make_experiment(tmp_path, "described")
    (folder / "Readme.md").write_text(
        "# described\n\n<!-- badge -->\nTrains on described text.\n\nMore.\n", encoding="utf-8"
    )

    (experiment,) = list_experiments(tmp_path)

    assert experiment.description == "Trains on described text."


# --- resolving preparers -------------------------------------------------------------------


def test_experiment_folder_outside_the_package_uses_its_own_prepare_py(tmp_path: Path) -> None:
    name = unique("copied")
    folder = make_experiment(tmp_path, name, prepare_marker="own preparer")

    run_prepare_step(folder)

    assert (folder / "prepared_by.txt").read_text(encoding="utf-8") == "own preparer"


def test_own_prepare_py_overrides_a_registered_preparer_of_the_same_name(
    tmp_path: Path,
) -> None:
    name = unique("shadowed")
    calls: list[PrepareContext] = []
    register(name)(recorder(calls))
    folder = make_experiment(tmp_path, name, prepare_marker="copy wins")

    run_prepare_step(folder)

    assert calls == []
    assert (folder / "prepared_by.txt").read_text(encoding="utf-8") == "copy wins"


def test_prepare_dataset_picks_another_experiments_preparer(tmp_path: Path) -> None:
    shared = unique("shared_corpus")
    calls: list[PrepareContext] = []
    register(shared)(recorder(calls))
    folder = make_experiment(tmp_path, unique("variant"), config={"prepare.dataset": shared})

    run_prepare_step(folder)

    (ctx,) = calls
    assert ctx.name == folder.name, "the preparer runs for the experiment that asked"
    assert ctx.directory == folder.resolve()
    assert ctx.config.prepare.dataset == shared


def test_unknown_dataset_error_lists_the_registered_preparers(tmp_path: Path) -> None:
    known = unique("known")
    register(known)(recorder([]))
    folder = make_experiment(tmp_path, unique("variant"), config={"prepare.dataset": "nosuch"})

    with pytest.raises(ExperimentNotFoundError) as caught:
        run_prepare_step(folder)

    message = str(caught.value)
    assert "no preparer registered as 'nosuch'" in message
    assert str(folder.resolve() / "config.toml") in message
    assert known in message.split("registered: ")[1].split(", ")


def test_experiment_without_any_preparer_is_an_error_naming_it(tmp_path: Path) -> None:
    name = unique("bare")
    folder = make_experiment(tmp_path, name)

    with pytest.raises(ExperimentNotFoundError, match=f"no preparer registered as '{name}'"):
        run_prepare_step(folder)


def test_two_copies_with_the_same_folder_name_each_use_their_own_prepare_py(
    tmp_path: Path,
) -> None:
    name = unique("twin")
    first = make_experiment(tmp_path / "a", name, prepare_marker="first")
    second = make_experiment(tmp_path / "b", name, prepare_marker="second")

    run_prepare_step(first)
    run_prepare_step(second)

    assert (second / "prepared_by.txt").read_text(encoding="utf-8") == "second"


# --- built-in sources: [prepare] source ----------------------------------------------------


def test_every_source_the_schema_accepts_has_a_built_in_preparer() -> None:
    assert set(BUILT_IN_SOURCES) == set(typing.get_args(PrepareSource))


@pytest.mark.parametrize("source", typing.get_args(PrepareSource))
def test_source_picks_its_built_in_preparer(tmp_path: Path, source: PrepareSource) -> None:
    experiment = find_experiment(str(make_experiment(tmp_path, unique("sourced"))))

    preparer = resolve_preparer(experiment, PrepareConfig(source=source))

    assert preparer is BUILT_IN_SOURCES[source]


def test_an_experiment_folder_with_only_a_config_prepares_from_its_text_source(
    tmp_path: Path,
) -> None:
    folder = make_experiment(
        tmp_path,
        unique("codeless"),
        config={"prepare.source": "text", "prepare.raw_text_path": "a.txt"},
    )
    (folder / "a.txt").write_text("to be or not to be\n" * 50, encoding="utf-8")

    run_prepare_step(folder)

    meta = json.loads((folder / "datasets" / "meta.json").read_text(encoding="utf-8"))
    assert [entry["path"] for entry in meta["fingerprint"]["inputs"]] == [
        str(folder.resolve() / "a.txt")
    ]


def test_source_wins_over_a_preparer_registered_under_the_experiment_name(
    tmp_path: Path,
) -> None:
    name = unique("both")
    calls: list[PrepareContext] = []
    register(name)(recorder(calls))
    experiment = find_experiment(str(make_experiment(tmp_path, name)))

    preparer = resolve_preparer(experiment, PrepareConfig(source="text"))

    assert preparer is BUILT_IN_SOURCES["text"]
    assert calls == []


def test_source_beside_the_experiments_own_prepare_py_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    folder = make_experiment(
        tmp_path, unique("twofold"), config={"prepare.source": "text"}, prepare_marker="own"
    )

    with pytest.raises(ConfigError) as caught:
        run_prepare_step(folder)

    message = str(caught.value)
    assert f"{folder.resolve() / 'config.toml'} sets prepare.source = 'text'" in message
    assert str(folder.resolve() / "prepare.py") in message
    assert "remove the key to run prepare.py, or delete prepare.py" in message
    assert not (folder / "prepared_by.txt").exists(), "neither preparer ran"


def test_source_and_dataset_together_are_refused_when_the_config_loads(tmp_path: Path) -> None:
    folder = make_experiment(
        tmp_path,
        unique("contradicts"),
        config={"prepare.source": "text", "prepare.dataset": "other"},
    )

    with pytest.raises(ConfigError) as caught:
        load_config(folder / "config.toml", folder, defaults_path=None)

    message = str(caught.value)
    assert str(folder / "config.toml") in message
    assert "prepare.source = 'text'" in message
    assert "prepare.dataset = 'other'" in message
    assert "keep one" in message


def test_an_unknown_source_names_the_key_the_value_and_the_choices(tmp_path: Path) -> None:
    folder = make_experiment(tmp_path, unique("typo"), config={"prepare.source": "txt"})

    with pytest.raises(ConfigError) as caught:
        load_config(folder / "config.toml", folder, defaults_path=None)

    message = str(caught.value)
    assert "prepare.source" in message
    assert "'txt'" in message
    assert "'text', 'speeches' or 'records'" in message


def test_no_source_and_no_preparer_names_the_key_and_the_sources_to_choose(
    tmp_path: Path,
) -> None:
    name = unique("bare")
    folder = make_experiment(tmp_path, name)

    with pytest.raises(ExperimentNotFoundError) as caught:
        run_prepare_step(folder)

    message = str(caught.value)
    assert f"and no prepare.source in {folder.resolve() / 'config.toml'}" in message
    assert "set prepare.source to one of 'text', 'speeches', 'records'" in message


def test_a_dataset_naming_an_experiment_that_uses_a_source_says_to_set_that_source(
    tmp_path: Path,
) -> None:
    folder = make_experiment(tmp_path, unique("reuser"), config={"prepare.dataset": "speakger"})

    with pytest.raises(ExperimentNotFoundError) as caught:
        run_prepare_step(folder)

    assert "experiment 'speakger' prepares with prepare.source = 'speeches'" in str(caught.value)


def test_a_copy_of_a_packaged_experiment_without_a_source_is_told_the_packaged_source(
    tmp_path: Path,
) -> None:
    folder = make_experiment(tmp_path, "bundestag_char", config={"prepare.tokenizer": "char"})

    with pytest.raises(ExperimentNotFoundError) as caught:
        run_prepare_step(folder)

    message = str(caught.value)
    assert "no preparer registered as 'bundestag_char' and no prepare.source" in message
    assert "experiment 'bundestag_char' prepares with prepare.source = 'text'" in message


def test_a_missing_source_is_one_error_line_and_exit_2_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("cli_bare")
    folder = make_experiment(tmp_path, name)

    code = cli.main(["prepare", str(folder)])

    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: no preparer registered as '{name}' and no prepare.source")
    assert len(err.splitlines()) == 1
    assert sorted(path.name for path in folder.iterdir()) == ["config.toml"], "nothing written"


def test_a_legacy_preparer_prepares_an_experiment_without_a_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("legacy_only")
    calls: list[PrepareContext] = []
    legacy = types.ModuleType(LEGACY_PREPARERS_MODULE)
    legacy.__dict__["PREPARERS"] = {name: recorder(calls)}
    monkeypatch.setitem(sys.modules, LEGACY_PREPARERS_MODULE, legacy)
    folder = make_experiment(tmp_path, name)

    run_prepare_step(folder)

    (ctx,) = calls
    assert ctx.name == name


def test_an_exp_config_without_a_source_takes_the_experiments_source_keys(
    tmp_path: Path,
) -> None:
    folder = make_experiment(
        tmp_path,
        unique("inherits"),
        config={"prepare.source": "text", "prepare.fallback_text": "sample.txt"},
    )
    (folder / "sample.txt").write_text("a sample\n", encoding="utf-8")
    override = tmp_path / "elsewhere" / "tiny.toml"
    override.parent.mkdir()
    write_toml(override, {"prepare.tokenizer": "char"})

    loaded = load_config(override, folder, defaults_path=None)

    assert loaded.config.prepare.source == "text"
    assert loaded.config.prepare.fallback_text == str(folder / "sample.txt")
    assert loaded.origin_of("prepare.source") == f"from {folder / 'config.toml'}"


def test_an_exp_config_that_names_a_dataset_keeps_it_and_takes_no_source(
    tmp_path: Path,
) -> None:
    folder = make_experiment(tmp_path, unique("keeps"), config={"prepare.source": "text"})
    override = tmp_path / "tiny.toml"
    write_toml(override, {"prepare.dataset": "shared"})

    loaded = load_config(override, folder, defaults_path=None)

    assert loaded.config.prepare.source is None
    assert loaded.config.prepare.dataset == "shared"


# --- the legacy `ml_playground.datasets` package -------------------------------------------


def test_absent_legacy_datasets_package_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, LEGACY_PREPARERS_MODULE, None)  # import now fails
    name = unique("modern")
    register(name)(recorder([]))

    preparers = all_preparers()

    assert name in preparers
    assert set(discover()) <= set(preparers)


def test_legacy_preparers_are_used_and_experiments_override_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    only_legacy, both = unique("legacy"), unique("both")
    legacy_fn, legacy_both, experiment_both = recorder([]), recorder([]), recorder([])
    legacy = types.ModuleType(LEGACY_PREPARERS_MODULE)
    legacy.__dict__["PREPARERS"] = {only_legacy: legacy_fn, both: legacy_both}
    monkeypatch.setitem(sys.modules, LEGACY_PREPARERS_MODULE, legacy)
    register(both)(experiment_both)

    preparers = all_preparers()

    assert preparers[only_legacy] is legacy_fn
    assert preparers[both] is experiment_both


def test_resolve_preparer_falls_back_to_the_experiment_name(tmp_path: Path) -> None:
    name = unique("named")
    calls: list[PrepareContext] = []
    register(name)(recorder(calls))
    experiment = find_experiment(str(make_experiment(tmp_path, name)))

    preparer = resolve_preparer(experiment, PrepareConfig())

    assert preparer is PREPARERS[name]


# --- scaffolding a new experiment ----------------------------------------------------------


def test_new_experiment_is_found_by_its_folder_and_described_by_its_readme(
    tmp_path: Path,
) -> None:
    created = new_experiment("poems", tmp_path)

    (experiment,) = list_experiments(tmp_path)
    assert experiment.directory == created
    assert experiment.name == "poems"
    assert experiment.description.startswith("A character-level GPT")
    # The name is filled in, and the experiment prepares with a built-in source, no code.
    assert "# poems" in (created / "Readme.md").read_text(encoding="utf-8")
    assert "{{name}}" not in (created / "Readme.md").read_text(encoding="utf-8")
    assert load_config(created / "config.toml", created).config.prepare.source == "text"
    assert not (created / "prepare.py").exists()


@pytest.mark.parametrize("name", ["Poems", "my-poems", "1poems", "_poems", "", "po ems"])
def test_new_experiment_rejects_names_that_are_not_identifiers(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid experiment name {name!r}"):
        new_experiment(name, tmp_path)

    assert list(tmp_path.iterdir()) == [tmp_path / "cwd"], "nothing was created"


def test_new_experiment_refuses_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "poems").mkdir()

    with pytest.raises(ConfigError, match="already exists"):
        new_experiment("poems", tmp_path)

    assert list((tmp_path / "poems").iterdir()) == []
