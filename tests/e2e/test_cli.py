"""The command line as a user runs it: a real `python -m ml_playground.cli` subprocess.

Every command runs with its working directory in tmp_path and only ever gets folders in
tmp_path, so nothing is written into the source tree. Experiments that need a preparer
bring their own tiny prepare.py, which keeps these tests independent of the data layer.
"""

from __future__ import annotations

import importlib.metadata
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from ml_playground.experiments import new_experiment
from tests.cli_helpers import EXIT_USER_ERROR, Cli, assert_one_error_line
from tests.experiments import scripted_experiment
from tests.toml_helpers import Settings, write_toml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_ROOT = REPO_ROOT / "ml_playground" / "experiments"
STEP_VERBS = ("prepare", "inspect", "train", "sample", "chat", "loop", "report", "export")
ALL_VERBS = (*STEP_VERBS, "compare", "list", "new")
EXIT_INTERRUPTED = 130

# A preparer that records which config it was given, so a test can see what the step got.
RECORDING_PREPARE_PY = """\
from ml_playground.experiments import PrepareContext, register


@register("{name}")
def prepare(ctx: PrepareContext) -> None:
    max_iters = ctx.config.train.runtime.max_iters
    (ctx.directory / "prepared.txt").write_text(str(max_iters), encoding="utf-8")
"""

# A preparer that takes long enough to be interrupted with Ctrl-C.
SLOW_PREPARE_PY = """\
import time

from ml_playground.experiments import PrepareContext, register


@register("{name}")
def prepare(ctx: PrepareContext) -> None:
    (ctx.directory / "started").write_text("", encoding="utf-8")
    time.sleep(60)
"""


# Not TOML: a table header left open, on line 3, as a user's typo would leave it.
UNCLOSED_TABLE_ON_LINE_3 = "[train.runtime]\nmax_iters = 10\n[train.model\n"

TIMEOUT = 120  # seconds


def cli(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return Cli(cwd, timeout=TIMEOUT).run(*args)


def packaged_experiment_names() -> list[str]:
    """The folders under ml_playground/experiments/ that hold a config.toml, templates aside."""
    return sorted(
        path.parent.name
        for path in EXPERIMENTS_ROOT.glob("*/config.toml")
        if not path.parent.name.startswith(("_", "."))
    )


def experiment(
    parent: Path, name: str, config: Settings | None = None, prepare_py: str | None = None
) -> Path:
    source = None if prepare_py is None else prepare_py.format(name=name)
    return scripted_experiment(parent, name, config, source)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The working directory of every command, and the parent of its experiments."""
    return tmp_path.resolve()


# --- help and listing ----------------------------------------------------------------------


def test_help_lists_every_verb_and_explains_experiment(workdir: Path) -> None:
    result = cli(workdir, "--help")

    assert result.returncode == 0
    first_words = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    for verb in ALL_VERBS:
        assert verb in first_words, f"{verb} has no line of its own in --help"
    assert "EXPERIMENT" in result.stdout
    assert "exit codes" in result.stdout


@pytest.mark.parametrize("verb", STEP_VERBS)
def test_step_verb_help_describes_the_experiment_argument(workdir: Path, verb: str) -> None:
    result = cli(workdir, verb, "--help")

    assert result.returncode == 0
    assert "EXPERIMENT" in result.stdout
    assert "--exp-config" in result.stdout


def test_new_help_describes_name_and_dir(workdir: Path) -> None:
    result = cli(workdir, "new", "--help")

    assert result.returncode == 0
    assert "NAME" in result.stdout
    assert "--dir" in result.stdout


def test_list_prints_every_experiment_folder(workdir: Path) -> None:
    expected = packaged_experiment_names()

    result = cli(workdir, "list")

    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    for name in expected:
        assert name in listed
    assert "_template" not in result.stdout


# --- errors: one line, exit code 2 ---------------------------------------------------------


def test_an_unknown_verb_exits_2_with_one_line_listing_the_verbs(workdir: Path) -> None:
    line = assert_one_error_line(cli(workdir, "trian", "shakespeare"))

    assert "unknown verb 'trian'; did you mean train?" in line
    for verb in ("prepare", "train", "sample", "loop", "export", "list", "new"):
        assert verb in line


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ((), "required: VERB"),
        (("train",), "required: EXPERIMENT"),
        (("sample", "shakespeare", "--temperature", "0"), "unrecognized arguments: --temperature"),
    ],
)
def test_a_usage_mistake_exits_2_with_one_line_not_a_usage_block(
    workdir: Path, arguments: tuple[str, ...], problem: str
) -> None:
    line = assert_one_error_line(cli(workdir, *arguments))

    assert problem in line
    assert "--help" in line


def test_unknown_experiment_exits_2_naming_the_known_ones(workdir: Path) -> None:
    known = packaged_experiment_names()

    line = assert_one_error_line(cli(workdir, "train", "nosuch"))

    assert "unknown experiment 'nosuch'" in line
    assert "known experiments:" in line
    for name in known:
        assert name in line


def test_misspelled_key_in_a_scaffolded_experiment_exits_2_with_a_suggestion(
    workdir: Path,
) -> None:
    folder = new_experiment("typo", workdir)
    config_path = folder / "config.toml"
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text.replace("learning_rate =", "learning_rat ="), encoding="utf-8")

    line = assert_one_error_line(cli(workdir, "train", folder))

    assert str(config_path) in line
    assert "train.optim.learning_rat" in line
    assert "did you mean learning_rate?" in line


def test_bad_toml_exits_2_naming_file_and_line(workdir: Path) -> None:
    folder = experiment(workdir, "broken")
    (folder / "config.toml").write_text(UNCLOSED_TABLE_ON_LINE_3, encoding="utf-8")

    line = assert_one_error_line(cli(workdir, "train", folder))

    assert str(folder / "config.toml") in line
    assert "line 3" in line


def test_a_speech_key_set_in_prepare_itself_exits_2_naming_its_section(
    workdir: Path,
) -> None:
    folder = experiment(workdir, "flat", {"prepare.periods": [19]})

    line = assert_one_error_line(cli(workdir, "prepare", folder))

    assert str(folder / "config.toml") in line
    assert "prepare.periods" in line
    assert "prepare.speeches.periods" in line


def test_verbose_adds_the_traceback_before_the_error_line(workdir: Path) -> None:
    folder = experiment(workdir, "broken")
    (folder / "config.toml").write_text(UNCLOSED_TABLE_ON_LINE_3, encoding="utf-8")

    result = cli(workdir, "train", folder, "--verbose")

    assert result.returncode == EXIT_USER_ERROR
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: invalid TOML in ")


# --- --exp-config and --print-config -------------------------------------------------------


@pytest.mark.parametrize("position", ["before the verb", "after the verb"])
def test_exp_config_replaces_the_experiment_config(workdir: Path, position: str) -> None:
    folder = experiment(
        workdir,
        "demo",
        {"train.runtime": {"max_iters": 5, "device": "cpu"}},
        RECORDING_PREPARE_PY,
    )
    variants = workdir / "variants"
    variants.mkdir()
    alternative = write_toml(
        variants / "long.toml", {"train.runtime": {"max_iters": 7, "device": "cpu"}}
    )
    options = ["--exp-config", str(alternative)]
    args = (
        [*options, "prepare", str(folder)]
        if position == "before the verb"
        else ["prepare", str(folder), *options]
    )

    result = cli(workdir, *args)

    assert result.returncode == 0, result.stderr
    assert (folder / "prepared.txt").read_text(encoding="utf-8") == "7", "the step got it"


def test_print_config_is_toml_with_origins_and_runs_nothing(workdir: Path) -> None:
    folder = experiment(
        workdir, "demo", {"train.runtime": {"max_iters": 7, "device": "cpu"}}, RECORDING_PREPARE_PY
    )

    result = cli(workdir, "prepare", folder, "--print-config")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"# effective config of demo ({folder / 'config.toml'})"
    assert "max_iters = 7  # experiment" in lines
    assert 'device = "cpu"  # experiment' in lines
    assert 'runtime_ref = "train.runtime"  # default' in lines
    # unset paths stay in the experiment folder
    assert f'dataset_dir = "{folder / "datasets"}"  # built-in' in lines
    assert "# date_from is unset (built-in)" in lines
    tables = tomllib.loads(result.stdout)
    assert tables["train"]["runtime"]["max_iters"] == 7
    assert not (folder / "prepared.txt").exists(), "a dry run does not run the step"


def test_print_config_output_round_trips_as_exp_config(workdir: Path) -> None:
    folder = experiment(workdir, "demo", {"train.runtime.max_iters": 7}, RECORDING_PREPARE_PY)
    first = cli(workdir, "train", folder, "--print-config")
    saved = workdir / "saved.toml"
    saved.write_text(first.stdout, encoding="utf-8")

    second = cli(workdir, "train", folder, "--exp-config", saved, "--print-config")
    ran = cli(workdir, "prepare", folder, "--exp-config", saved)

    assert second.returncode == 0, second.stderr
    values = [line.split("  #")[0] for line in first.stdout.splitlines()[1:]]
    assert [line.split("  #")[0] for line in second.stdout.splitlines()[1:]] == values
    assert ran.returncode == 0, ran.stderr
    assert (folder / "prepared.txt").read_text(encoding="utf-8") == "7"


# --- version, completion, options a verb would ignore ---------------------------------------


def test_version_prints_the_installed_version(workdir: Path) -> None:
    result = cli(workdir, "--version")

    assert result.returncode == 0
    assert result.stdout.strip() == f"ml-playground {importlib.metadata.version('ml-playground')}"


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--exp-config", "x.toml"],
        ["--exp-config", "x.toml", "list"],
        ["--print-config", "list"],
        ["new", "poems", "--print-config"],
        ["--exp-config", "x.toml", "new", "poems"],
    ],
)
def test_list_and_new_reject_the_config_options_they_would_ignore(
    workdir: Path, args: list[str]
) -> None:
    line = assert_one_error_line(cli(workdir, *args))

    assert "config" in line
    assert not (workdir / "experiments").exists() and not (workdir / "poems").exists()


def test_only_the_verbs_that_checkpoint_promise_a_resume_on_ctrl_c(workdir: Path) -> None:
    for verb in STEP_VERBS:
        text = cli(workdir, verb, "--help").stdout
        assert "130 interrupted" in text
        assert ("run the same command to resume" in text) == (verb in {"train", "loop"}), verb


def completions(workdir: Path, line: str) -> list[str]:
    """What the shell would offer for `line` (argcomplete's protocol, as bash drives it)."""
    answer = workdir / "completions.txt"
    env: dict[str, str | None] = {
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "COMP_TYPE": "9",
    }
    result = Cli(workdir, env=env, timeout=TIMEOUT).run()
    assert result.returncode == 0, result.stderr
    return answer.read_text(encoding="utf-8").split()


def test_the_shell_completes_verbs_and_experiment_names(workdir: Path) -> None:
    experiment(workdir / "experiments", "mine", prepare_py=RECORDING_PREPARE_PY)

    assert "loop" in completions(workdir, "ml-playground lo")
    assert completions(workdir, "ml-playground train sha") == ["shakespeare", "shakespeare_sft"]
    assert completions(workdir, "ml-playground train mi") == ["mine"]


# --- experiments outside the package --------------------------------------------------------


def test_an_experiment_in_the_working_directory_is_found_by_name_and_listed(
    workdir: Path,
) -> None:
    folder = experiment(
        workdir / "experiments", "mine", {"train.runtime.max_iters": 3}, RECORDING_PREPARE_PY
    )

    ran = cli(workdir, "prepare", "mine")
    listed = cli(workdir, "list").stdout.splitlines()

    assert ran.returncode == 0, ran.stderr
    assert (folder / "prepared.txt").read_text(encoding="utf-8") == "3"
    where = listed.index(next(line for line in listed if line.startswith("mine ")))
    assert listed[where + 1].split() == [str(folder), "[not", "prepared]"]
    assert any(line.split()[:1] == ["shakespeare"] for line in listed), "bundled ones stay"


def test_the_environment_folder_comes_first_and_new_writes_there(workdir: Path) -> None:
    mine = workdir / "mine"
    env_cli = {"ML_PLAYGROUND_EXPERIMENTS": str(mine)}

    created = run_with_env(workdir, env_cli, "new", "shakespeare")
    found = run_with_env(workdir, env_cli, "prepare", "shakespeare", "--print-config")

    assert created.returncode == 0, created.stderr
    assert (mine / "shakespeare" / "config.toml").is_file()
    assert "`ml-playground loop shakespeare`" in created.stdout
    assert found.stdout.splitlines()[0].endswith(f"({mine / 'shakespeare' / 'config.toml'})")


def run_with_env(cwd: Path, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return Cli(cwd, timeout=TIMEOUT).with_env(**extra).run(*args)


# --- interruption --------------------------------------------------------------------------


def test_ctrl_c_exits_130(workdir: Path) -> None:
    folder = experiment(workdir, "slow", prepare_py=SLOW_PREPARE_PY)
    with Cli(workdir, timeout=TIMEOUT).started("prepare", folder) as process:
        deadline = time.monotonic() + 60
        while not (folder / "started").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "the preparer never started"
            time.sleep(0.05)

        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert stderr.splitlines()[-1].startswith("interrupted; nothing new was saved")
    assert "Traceback" not in stderr


# --- new -----------------------------------------------------------------------------------


def test_new_scaffolds_a_named_experiment_once(workdir: Path) -> None:
    result = cli(workdir, "new", "poems", "--dir", workdir)

    assert result.returncode == 0, result.stderr
    created = workdir / "poems"
    assert f"created experiment poems in {created}" in result.stdout
    for file in ("config.toml", "__init__.py", "Readme.md"):
        text = (created / file).read_text(encoding="utf-8")
        assert "{{name}}" not in text, file
        assert "poems" in text, file
    # A built-in source prepares it: the scaffold holds no code to keep in step.
    assert 'source = "text"' in (created / "config.toml").read_text(encoding="utf-8")
    assert not (created / "prepare.py").exists()
    assert sorted(path.name for path in workdir.iterdir()) == ["poems"], "no staging left"

    readme = created / "Readme.md"
    readme.write_text("my notes\n", encoding="utf-8")
    line = assert_one_error_line(cli(workdir, "new", "poems", "--dir", workdir))

    assert f"{created} already exists" in line
    assert readme.read_text(encoding="utf-8") == "my notes\n", "nothing was overwritten"


def test_new_rejects_an_invalid_name(workdir: Path) -> None:
    line = assert_one_error_line(cli(workdir, "new", "My-Poems", "--dir", workdir))

    assert "invalid experiment name 'My-Poems'" in line
    assert list(workdir.iterdir()) == []
