"""Loading an experiment's TOML: layering, path resolution, validation and its messages.

Every test writes real TOML files into tmp_path and loads them with `load_config`. Most
tests pass their own defaults file (or none), so they do not depend on what the shipped
`experiments/default_config.toml` happens to contain.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from ml_playground.config_loader import DEFAULT_CONFIG_PATH, LoadedConfig, load_config
from ml_playground.errors import ConfigError, UserError
from ml_playground.experiments import new_experiment

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "ml_playground"
SHIPPED_CONFIGS = sorted(PACKAGE_DIR.glob("experiments/*/config.toml")) + sorted(
    PACKAGE_DIR.glob("configs/*.toml")
)


@dataclasses.dataclass(frozen=True)
class Layout:
    """An experiment folder and a defaults file that lives in a different folder."""

    experiment_dir: Path
    config_path: Path
    defaults_path: Path

    def write(self, experiment: str = "", defaults: str = "") -> None:
        self.config_path.write_text(experiment, encoding="utf-8")
        self.defaults_path.write_text(defaults, encoding="utf-8")

    def load(self, experiment: str = "", defaults: str = "") -> LoadedConfig:
        self.write(experiment, defaults)
        return load_config(self.config_path, self.experiment_dir, self.defaults_path)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    experiment_dir = tmp_path.resolve() / "experiments" / "demo"
    defaults_dir = tmp_path.resolve() / "shared"
    experiment_dir.mkdir(parents=True)
    defaults_dir.mkdir()
    return Layout(
        experiment_dir=experiment_dir,
        config_path=experiment_dir / "config.toml",
        defaults_path=defaults_dir / "default_config.toml",
    )


def config_error(layout: Layout, experiment: str = "", defaults: str = "") -> str:
    with pytest.raises(ConfigError) as caught:
        layout.load(experiment, defaults)
    message = str(caught.value)
    assert "\n" not in message, "the CLI prints errors as one line"
    return message


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from leaves(cast(Mapping[str, Any], value), f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --- validation messages: each names the dotted key and the file that set it -------------

# (toml, fragments the message must contain); the dotted key is always among them.
INVALID = {
    "unknown key, with suggestion": (
        "[train.optim]\nlearning_rat = 1e-3\n",
        ["unknown key train.optim.learning_rat", "did you mean learning_rate?"],
    ),
    "unknown key without a close match lists the valid keys": (
        "[train.optim]\nzzz = 1\n",
        ["unknown key train.optim.zzz", "valid keys: learning_rate, weight_decay"],
    ),
    "unknown top-level section": (
        "[trian.optim]\nlearning_rate = 1e-3\n",
        ["unknown key trian", "did you mean train?"],
    ),
    "unknown subsection": (
        "[train.optimizer]\nlearning_rate = 1e-3\n",
        ["unknown key train.optimizer", "did you mean optim?"],
    ),
    "string for a number": (
        '[train.optim]\nlearning_rate = "fast"\n',
        ["invalid value for train.optim.learning_rate", "valid number", "'fast' (str)"],
    ),
    "float for an int": (
        "[train.runtime]\nmax_iters = 100.0\n",
        ["invalid value for train.runtime.max_iters", "valid integer", "100.0 (float)"],
    ),
    "bool for an int": (
        "[train.model]\nn_layer = true\n",
        ["invalid value for train.model.n_layer", "valid integer", "True (bool)"],
    ),
    "value outside a literal": (
        '[train.runtime]\ndevice = "gpu"\n',
        ["invalid value for train.runtime.device", "'gpu' (str)"],
    ),
    "eval_interval 0": (
        "[train.runtime]\neval_interval = 0\n",
        ["invalid value for train.runtime.eval_interval", "greater than or equal to 1"],
    ),
    "log_interval 0": (
        "[train.runtime]\nlog_interval = 0\n",
        ["invalid value for train.runtime.log_interval", "greater than or equal to 1"],
    ),
    "temperature -1": (
        "[sample.sample]\ntemperature = -1.0\n",
        ["invalid value for sample.sample.temperature", "greater than or equal to 0"],
    ),
    "top_k -1": (
        "[sample.sample]\ntop_k = -1\n",
        ["invalid value for sample.sample.top_k", "greater than or equal to 0"],
    ),
    "top_p 0": (
        "[sample.sample]\ntop_p = 0.0\n",
        ["invalid value for sample.sample.top_p", "greater than 0"],
    ),
    "top_p 1.5": (
        "[sample.sample]\ntop_p = 1.5\n",
        ["invalid value for sample.sample.top_p", "less than or equal to 1"],
    ),
    "train_split 1.0": (
        "[prepare]\ntrain_split = 1.0\n",
        ["invalid value for prepare.train_split", "less than 1"],
    ),
    "missing required key": (
        '[train.hf_model]\nrevision = "main"\n',
        ["missing required key train.hf_model.model_name"],
    ),
    "data.block_size above model.block_size": (
        "[train.model]\nblock_size = 64\n[train.data]\nblock_size = 128\n",
        ["train.data.block_size = 128 must be <= train.model.block_size = 64"],
    ),
    "data.block_size above hf_model.block_size": (
        '[train.data]\nblock_size = 600\n[train.hf_model]\nmodel_name = "m"\nblock_size = 512\n',
        ["train.data.block_size = 600 must be <= train.hf_model.block_size = 512"],
    ),
    "warmup_iters above lr_decay_iters": (
        "[train.schedule]\nwarmup_iters = 500\nlr_decay_iters = 100\n",
        ["train.schedule.warmup_iters = 500 must be <= train.schedule.lr_decay_iters = 100"],
    ),
    "min_lr above learning_rate": (
        "[train.optim]\nlearning_rate = 1e-4\n[train.schedule]\nmin_lr = 1e-3\n",
        ["train.schedule.min_lr = 0.001 must be <= train.optim.learning_rate = 0.0001"],
    ),
    "n_embd not divisible by n_head": (
        "[train.model]\nn_embd = 100\nn_head = 3\n",
        ["train.model.n_embd = 100 must be divisible by train.model.n_head = 3"],
    ),
    "peft without hf_model": (
        "[train.peft]\nr = 4\n",
        ["[train.peft] needs a [train.hf_model] section"],
    ),
    "unknown optimizer": (
        '[train.optim]\nname = "sgd"\n',
        ["invalid value for train.optim.name", "'adamw' or 'muon'", "'sgd' (str)"],
    ),
    "muon for LoRA adapters": (
        '[train.optim]\nname = "muon"\n[train.hf_model]\nmodel_name = "m"\n',
        ["train.optim.name = 'muon' is for GPTs trained from scratch", "use name = 'adamw'"],
    ),
    "unknown dtype": (
        '[train.runtime]\ndtype = "fp8"\n',
        ["invalid value for train.runtime.dtype", "'auto'", "'fp8' (str)"],
    ),
    "unknown architecture": (
        '[train.model]\narch = "mamba"\n',
        ["invalid value for train.model.arch", "'gpt2' or 'llama'", "'mamba' (str)"],
    ),
    "llama with biases": (
        '[train.model]\narch = "llama"\nbias = true\n',
        ["train.model.bias = true is not available with arch = 'llama'", "remove the key"],
    ),
    "llama head width odd": (
        '[train.model]\narch = "llama"\nn_embd = 36\nn_head = 4\n',
        ["train.model.n_embd / n_head = 9 must be even for arch = 'llama'"],
    ),
    "a tokenizer prepare does not write": (
        '[prepare]\ntokenizer = "hf"\n',
        ["invalid value for prepare.tokenizer", "'char' or 'tiktoken'", "'hf' (str)"],
    ),
    "another name for train.bin": (
        '[train.data]\ntrain_bin = "tokens.bin"\n',
        ["train.data.train_bin = 'tokens.bin': prepare always writes train.bin; remove the key"],
    ),
    "another name for val.bin": (
        '[train.data]\nval_bin = "v.bin"\n',
        ["train.data.val_bin = 'v.bin': prepare always writes val.bin; remove the key"],
    ),
    "another name for meta.json": (
        '[train.data]\nmeta_file = "m.json"\n',
        ["train.data.meta_file = 'm.json': prepare always writes meta.json; remove the key"],
    ),
    "a key of a subsection set in its parent": (
        "[train]\nlearning_rate = 1e-3\n",
        ["unknown key train.learning_rate", "did you mean train.optim.learning_rate?"],
    ),
    "n_head not a multiple of n_kv_head": (
        '[train.model]\narch = "llama"\nn_head = 4\nn_kv_head = 3\n',
        ["train.model.n_head = 4 must be a multiple of train.model.n_kv_head = 3"],
    ),
}


@pytest.mark.parametrize(("toml", "fragments"), INVALID.values(), ids=INVALID.keys())
def test_invalid_experiment_config_names_key_and_experiment_file(
    layout: Layout, toml: str, fragments: list[str]
) -> None:
    message = config_error(layout, experiment=toml)

    assert str(layout.config_path) in message
    assert str(layout.defaults_path) not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("toml", "fragments"),
    INVALID.values(),
    ids=INVALID.keys(),
)
def test_invalid_defaults_config_names_key_and_defaults_file(
    layout: Layout, toml: str, fragments: list[str]
) -> None:
    message = config_error(layout, defaults=toml)

    assert str(layout.defaults_path) in message
    assert str(layout.config_path) not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        pytest.param("[train]\nmodel = 5\n", "train.model", id="train.model"),
        pytest.param(
            '[sample]\nruntime = "train.runtime"\n',
            "sample.runtime",
            id="sample.runtime",
        ),
        pytest.param(
            '[train]\nruntime = "cpu"\n',
            "train.runtime",
            id="train.runtime",
        ),
        pytest.param(
            '[train]\ndata = "datasets"\n',
            "train.data",
            id="train.data",
        ),
        pytest.param(
            "[export]\nollama = true\n",
            "export.ollama",
            id="export.ollama",
        ),
    ],
)
def test_value_where_a_section_belongs_is_rejected_naming_the_section(
    layout: Layout, toml: str, key: str
) -> None:
    layout.write(experiment=toml)

    try:
        load_config(layout.config_path, layout.experiment_dir, layout.defaults_path)
    except ConfigError as exc:
        message = str(exc)
    else:
        message = "loaded without an error"

    assert f"invalid value for {key} in {layout.config_path}" in message
    assert "valid dictionary" in message


def test_rule_names_the_file_of_the_key_it_checks_when_layers_disagree(layout: Layout) -> None:
    message = config_error(
        layout,
        defaults="[train.data]\nblock_size = 128\n",
        experiment="[train.model]\nblock_size = 64\n",
    )

    assert f"invalid config in {layout.defaults_path}" in message
    assert "train.data.block_size = 128 must be <= train.model.block_size = 64" in message


def test_experiment_value_can_repair_a_value_the_defaults_file_sets(layout: Layout) -> None:
    loaded = layout.load(
        defaults="[train.runtime]\nlog_interval = 0\n",
        experiment="[train.runtime]\nlog_interval = 5\n",
    )

    assert loaded.config.train.runtime.log_interval == 5


def test_int_is_accepted_where_a_float_is_expected(layout: Layout) -> None:
    loaded = layout.load(experiment="[sample.sample]\ntemperature = 0\n")

    assert loaded.config.sample.sample.temperature == 0.0


def test_toml_syntax_error_names_file_and_line(layout: Layout) -> None:
    message = config_error(layout, experiment='[train.optim]\nlearning_rate = 1e-3\n[train\nx = "')

    assert f"invalid TOML in {layout.config_path}" in message
    assert "line 3" in message


def test_toml_syntax_error_in_defaults_file_names_the_defaults_file(layout: Layout) -> None:
    message = config_error(layout, defaults="seed = = 1\n")

    assert f"invalid TOML in {layout.defaults_path}" in message
    assert "line 1" in message


def test_missing_config_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "config.toml"

    with pytest.raises(ConfigError, match="config file not found") as caught:
        load_config(missing, tmp_path, defaults_path=None)

    assert str(missing.resolve()) in str(caught.value)
    assert isinstance(caught.value, UserError)


# --- layering ------------------------------------------------------------------------------


def test_experiment_wins_over_defaults_key_by_key_and_sections_merge(layout: Layout) -> None:
    loaded = layout.load(
        defaults="[train.optim]\nlearning_rate = 1e-3\nweight_decay = 0.2\n",
        experiment="[train.optim]\nlearning_rate = 2e-3\n",
    )

    optim = loaded.config.train.optim
    assert optim.learning_rate == 2e-3
    assert optim.weight_decay == 0.2
    assert optim.beta1 == 0.9  # neither file sets it: the built-in default
    assert loaded.origin_of("train.optim.learning_rate") == "experiment"
    assert loaded.origin_of("train.optim.weight_decay") == "default"
    assert loaded.origin_of("train.optim.beta1") == "built-in"


def test_describe_tags_every_key_with_its_origin(layout: Layout) -> None:
    loaded = layout.load(
        defaults="[train.optim]\nweight_decay = 0.2\n",
        experiment='[train.optim]\nlearning_rate = 2e-3\n[prepare]\ndataset_dir = "data"\n',
    )

    lines = loaded.describe()

    assert "train.optim.learning_rate = 0.002  (experiment)" in lines
    assert "train.optim.weight_decay = 0.2  (default)" in lines
    assert "train.optim.beta1 = 0.9  (built-in)" in lines
    data_dir = layout.experiment_dir / "data"
    assert f"train.data.dataset_dir = {str(data_dir)!r}  (from prepare.dataset_dir)" in lines
    assert all(line.endswith(")") and "  (" in line for line in lines)
    assert len({line.split(" = ")[0] for line in lines}) == len(lines), "one line per key"


def test_shipped_defaults_file_sits_under_the_experiment(tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text('[train.runtime]\ndevice = "cpu"\n', encoding="utf-8")
    shipped = tomllib.loads(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))

    loaded = load_config(config_path, tmp_path)  # the default defaults_path

    assert loaded.origin_of("train.runtime.device") == "experiment"
    for key, _ in leaves(shipped):
        if key != "train.runtime.device":
            assert loaded.origin_of(key) == "default", key


def test_no_defaults_file_means_built_in_values(tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text("", encoding="utf-8")

    loaded = load_config(config_path, tmp_path, defaults_path=None)

    assert loaded.config.sample.runtime_ref is None
    assert loaded.origin_of("sample.sample.temperature") == "built-in"


# --- paths ---------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_file_that_set_them(layout: Layout) -> None:
    loaded = layout.load(
        defaults='[prepare]\nraw_dir = "corpora/raw"\n',
        experiment='[prepare]\nraw_text_path = "input/text.txt"\n',
    )

    prepare = loaded.config.prepare
    assert prepare.raw_dir == layout.defaults_path.parent / "corpora" / "raw"
    assert prepare.raw_text_path == layout.experiment_dir / "input" / "text.txt"


def test_exp_config_elsewhere_anchors_its_paths_but_defaults_stay_in_experiment(
    tmp_path: Path,
) -> None:
    experiment_dir = tmp_path.resolve() / "demo"
    other = tmp_path.resolve() / "variants"
    experiment_dir.mkdir()
    other.mkdir()
    (other / "small.toml").write_text('[train.runtime]\nout_dir = "out/small"\n', "utf-8")

    loaded = load_config(other / "small.toml", experiment_dir, defaults_path=None)

    assert loaded.config.train.runtime.out_dir == other / "out" / "small"
    assert loaded.config.prepare.dataset_dir == experiment_dir / "datasets"


def test_parent_references_in_relative_paths_are_normalised(layout: Layout) -> None:
    loaded = layout.load(experiment='[prepare]\ndataset_dir = "../shared_data"\n')

    assert loaded.config.prepare.dataset_dir == layout.experiment_dir.parent / "shared_data"


def test_absolute_paths_stay_as_written(layout: Layout, tmp_path: Path) -> None:
    absolute = tmp_path.resolve() / "elsewhere" / "ckpts"

    loaded = layout.load(experiment=f"[train.runtime]\nout_dir = '{absolute}'\n")

    assert loaded.config.train.runtime.out_dir == absolute


def test_tilde_expands_to_the_home_folder(
    layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path.resolve() / "home"
    monkeypatch.setenv("HOME", str(home))

    loaded = layout.load(experiment='[prepare]\nraw_dir = "~/texts"\n')

    assert loaded.config.prepare.raw_dir == home / "texts"


def test_unset_path_keys_land_in_the_experiment_folder(layout: Layout) -> None:
    loaded = layout.load()

    config = loaded.config
    assert config.prepare.dataset_dir == layout.experiment_dir / "datasets"
    assert config.train.data.dataset_dir == layout.experiment_dir / "datasets"
    assert config.train.runtime.out_dir == layout.experiment_dir / "out"
    assert config.sample.runtime.out_dir == layout.experiment_dir / "out"
    assert config.export.ollama.export_dir == layout.experiment_dir / "export"
    assert config.prepare.raw_dir is None


def test_train_data_dir_follows_prepare_dataset_dir_unless_set(layout: Layout) -> None:
    inherited = layout.load(experiment='[prepare]\ndataset_dir = "data/tok"\n')
    explicit = layout.load(
        experiment='[prepare]\ndataset_dir = "data/tok"\n[train.data]\ndataset_dir = "other"\n'
    )

    assert inherited.config.train.data.dataset_dir == layout.experiment_dir / "data" / "tok"
    assert explicit.config.train.data.dataset_dir == layout.experiment_dir / "other"
    assert explicit.origin_of("train.data.dataset_dir") == "experiment"


def test_file_prompt_resolves_relative_to_the_config_file(layout: Layout) -> None:
    loaded = layout.load(experiment='[sample.sample]\nstart = "FILE:prompts/intro.txt"\n')

    expected = layout.experiment_dir / "prompts" / "intro.txt"
    assert loaded.config.sample.sample.start == f"FILE:{expected}"


def test_plain_prompt_is_left_alone(layout: Layout) -> None:
    loaded = layout.load(experiment='[sample.sample]\nstart = "ROMEO: prompts/x.txt"\n')

    assert loaded.config.sample.sample.start == "ROMEO: prompts/x.txt"


# --- sample.runtime_ref ---------------------------------------------------------------------


def test_runtime_ref_makes_sampling_use_the_training_runtime(layout: Layout) -> None:
    loaded = layout.load(
        experiment=(
            '[train.runtime]\nout_dir = "out/run1"\ndevice = "cpu"\ndtype = "bfloat16"\n'
            '[sample]\nruntime_ref = "train.runtime"\n'
        )
    )

    runtime = loaded.config.sample.runtime
    assert runtime.out_dir == layout.experiment_dir / "out" / "run1"
    assert runtime.device == "cpu"
    assert runtime.dtype == "bfloat16"
    assert loaded.origin_of("sample.runtime.device") == "from train.runtime.device"


def test_runtime_ref_keeps_what_sample_runtime_sets_itself(layout: Layout) -> None:
    loaded = layout.load(
        defaults='[sample]\nruntime_ref = "train.runtime"\n',
        experiment=(
            '[train.runtime]\nout_dir = "out/run1"\ndevice = "cpu"\n'
            '[sample.runtime]\ndevice = "cuda"\n'
        ),
    )

    runtime = loaded.config.sample.runtime
    assert runtime.device == "cuda"
    assert runtime.out_dir == layout.experiment_dir / "out" / "run1"
    assert loaded.origin_of("sample.runtime.device") == "experiment"


def test_without_runtime_ref_sampling_has_its_own_runtime(layout: Layout) -> None:
    loaded = layout.load(experiment='[train.runtime]\nout_dir = "out/run1"\ndevice = "cpu"\n')

    runtime = loaded.config.sample.runtime
    assert runtime.device == "auto"
    assert runtime.out_dir == layout.experiment_dir / "out"


def test_shipped_defaults_link_sampling_to_the_training_runtime(tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text('[train.runtime]\nout_dir = "out/x"\ndevice = "cpu"\n', "utf-8")

    loaded = load_config(config_path, tmp_path)

    assert loaded.config.sample.runtime.device == "cpu"
    assert loaded.config.sample.runtime.out_dir == tmp_path.resolve() / "out" / "x"


# --- [prepare.speeches] ----------------------------------------------------------------------


def test_prepare_speeches_section_parses(layout: Layout) -> None:
    loaded = layout.load(
        "[prepare.speeches]\nskip_chair = false\nperiods = [19, 20]\nmax_records = 5\n"
        'doc_separator = ""\n'
    )

    speeches = loaded.config.prepare.speeches
    assert (speeches.skip_chair, speeches.periods, speeches.max_records) == (False, [19, 20], 5)
    assert speeches.doc_separator == ""
    assert speeches.skip_interjections  # the default
    assert loaded.origin_of("prepare.speeches.periods") == "experiment"


def test_a_speech_key_set_in_prepare_itself_is_refused_naming_its_section(
    layout: Layout,
) -> None:
    message = config_error(layout, "[prepare]\nperiods = [19]\n")

    assert f"unknown key prepare.periods in {layout.config_path}" in message
    assert "did you mean prepare.speeches.periods?" in message


# --- immutability ---------------------------------------------------------------------------


def test_loaded_config_cannot_be_changed(layout: Layout) -> None:
    loaded = layout.load()
    attribute = "learning_rate"

    with pytest.raises(ValidationError, match="frozen"):
        setattr(loaded.config.train.optim, attribute, 1.0)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(loaded.config, "train", loaded.config.train)  # noqa: B010 - type checkers forbid it
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(loaded, "config", loaded.config)  # noqa: B010 - type checkers forbid it


# --- configs that ship with the project -----------------------------------------------------


def test_scaffolded_experiment_config_loads_with_its_name(tmp_path: Path) -> None:
    created = new_experiment("my_corpus", tmp_path)

    loaded = load_config(created / "config.toml", created)

    assert loaded.config.train.runtime.out_dir == created.resolve() / "out" / "my_corpus"
    assert loaded.config.sample.runtime.out_dir == created.resolve() / "out" / "my_corpus"


def _listing(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def _experiment_dir_for(config_path: Path) -> Path:
    """An experiment's own config.toml, or a configs/<experiment>_<variant>.toml preset."""
    if config_path.name == "config.toml":
        return config_path.parent
    experiments = [path.parent for path in PACKAGE_DIR.glob("experiments/*/config.toml")]
    owners = [path for path in experiments if config_path.stem.startswith(path.name)]
    return max(owners, key=lambda path: len(path.name), default=config_path.parent)


@pytest.mark.parametrize(
    "config_path",
    SHIPPED_CONFIGS,
    ids=[str(path.relative_to(PACKAGE_DIR)) for path in SHIPPED_CONFIGS],
)
def test_shipped_config_loads_silently_without_writing_anything(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment_dir = _experiment_dir_for(config_path)
    before = (_listing(config_path.parent), _listing(experiment_dir))

    loaded = load_config(config_path, experiment_dir)

    assert (_listing(config_path.parent), _listing(experiment_dir)) == before
    assert loaded.config_path == config_path.resolve()
    assert capsys.readouterr().err == ""
