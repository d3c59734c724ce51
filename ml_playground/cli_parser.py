"""The command line's grammar: the verbs, their flags and the help text argparse shows.

`cli.py` owns what each verb does (`cli.STEPS`) and hands this module the verbs' one-line
summaries; a usage mistake here is a `UsageError` like every other error, so the CLI
prints it as one `error: ...` line.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from ml_playground.errors import UsageError
from ml_playground.experiments import list_experiments

DESCRIPTION = """\
ml-playground: prepare text, train small GPTs from scratch, fine-tune Hugging Face models
with LoRA, sample from them and export them to GGUF/Ollama. One experiment = one folder
with a config.toml (./experiments/NAME/, or one bundled with the package).

typical run:
  ml-playground list                      # what experiments exist
  ml-playground loop shakespeare          # prepare -> train -> sample
  ml-playground sample shakespeare        # sample again from the best checkpoint
"""

EXPERIMENT_HELP = """\
EXPERIMENT is an experiment's name (see `ml-playground list`: ./experiments/ and
$ML_PLAYGROUND_EXPERIMENTS are searched before the bundled ones) or a path to a folder
holding a config.toml. --exp-config replaces the experiment's config.toml (the project
defaults in experiments/default_config.toml still apply underneath). Relative paths in a
config resolve against the folder of the file that sets them.
"""
EXIT_CODES = "exit codes: 0 success, 2 user error (message on stderr), 130 interrupted.\n"
EXIT_CODES_CHECKPOINTING = (
    "exit codes: 0 success, 2 user error (message on stderr), 130 interrupted (the\n"
    "checkpoint is saved first; run the same command to resume).\n"
)
EPILOG = f"{EXPERIMENT_HELP}\n{EXIT_CODES_CHECKPOINTING}"
# The verbs whose Ctrl-C saves a checkpoint before it exits.
CHECKPOINTING_VERBS = frozenset({"train", "loop"})

ALIASES = {"convert": "export"}
# The verbs that read no experiment config; cli.py runs them itself.
OWN_VERBS = ("compare", "list", "new")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error: ...` line like every other error."""

    verbs: tuple[str, ...] = ()  # what an unknown verb's message lists, in help order

    def error(self, message: str) -> NoReturn:
        choice = INVALID_CHOICE.search(message)
        if choice is not None and self._subparsers is not None:
            close = difflib.get_close_matches(choice["value"], self.verbs, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(
                f"unknown verb {choice['value']!r}; {hint}the verbs are {', '.join(self.verbs)} "
                f"(see `{self.prog} --help`)"
            )
        raise UsageError(f"{message} (see `{self.prog} --help`)")


INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)'")


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted both before and after the verb."""
    default_none = argparse.SUPPRESS if suppress else None
    default_false = argparse.SUPPRESS if suppress else False
    parser.add_argument(
        "--exp-config",
        type=Path,
        metavar="PATH",
        default=default_none,
        help="use this TOML instead of the experiment's config.toml",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        default=default_false,
        help="print the effective config as TOML (each key's origin as a comment) and exit;"
        " the output works as --exp-config",
    )
    _verbose_option(parser, suppress=suppress)


def _verbose_option(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="show tracebacks for errors",
    )


def build_parser(summaries: Mapping[str, str]) -> argparse.ArgumentParser:
    """The parser of every verb; `summaries` holds each step verb's one-line help."""
    parser = _Parser(
        prog="ml-playground",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.verbs = (*summaries, *ALIASES, *OWN_VERBS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_options(parser, suppress=False)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, summary in summaries.items():
        aliases = [alias for alias, target in ALIASES.items() if target == verb]
        exit_codes = EXIT_CODES_CHECKPOINTING if verb in CHECKPOINTING_VERBS else EXIT_CODES
        sub = verbs.add_parser(
            verb,
            aliases=aliases,
            help=summary,
            description=f"{summary}.",
            epilog=f"{EXPERIMENT_HELP}\n{exit_codes}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        experiment_arg = sub.add_argument(
            "experiment", metavar="EXPERIMENT", help="experiment name or folder"
        )
        experiment_arg.completer = _complete_experiments  # type: ignore[attr-defined]
        for flag, help_text in ACTION_FLAGS.get(verb, {}).items():
            sub.add_argument(flag, action="store_true", help=help_text)
        if verb == "eval":
            sub.add_argument(
                "--text",
                type=Path,
                metavar="FILE",
                default=None,
                help="score this UTF-8 text file instead of the val split",
            )
        if verb == "inspect":
            sub.add_argument(
                "--n",
                type=_positive_int,
                metavar="N",
                default=None,
                help="how many training windows to show (default 3); the first N the run's "
                "batcher draws. Targets are coloured on a terminal; in a pipe or file they "
                "stand between [[ and ]]",
            )
        _global_options(sub, suppress=True)
    comparing = verbs.add_parser(
        "compare",
        help="compare two or more runs: a table, compare.md and compare.png (loss over tokens)",
        description=(
            "Compare two or more runs (experiment names or folders, or out_dirs) from their\n"
            "TensorBoard events and eval results: print a table and write compare.md and\n"
            "compare.png into the working directory (or --out DIR). Runs with different\n"
            "tokenizers are compared on bits per byte (run `eval` on each first)."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    comparing.add_argument("runs", metavar="RUN", nargs="+", help="experiment or out_dir")
    comparing.add_argument(
        "--out",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="where compare.md and compare.png go",
    )
    _verbose_option(comparing, suppress=True)
    listing = verbs.add_parser(
        "list",
        help="list the experiments: where each lives, whether it is prepared and trained",
        description="List experiments.",
    )
    _verbose_option(listing, suppress=True)
    new = verbs.add_parser(
        "new",
        help="scaffold a new experiment folder from the template",
        description=(
            "Create experiments/NAME/ with a working config.toml and Readme.md "
            "copied from the template: under --dir if given, else $ML_PLAYGROUND_EXPERIMENTS "
            "if set, else ./experiments/ (the package's own folder in a source checkout)."
        ),
    )
    new.add_argument("name", metavar="NAME", help="experiment name: lowercase letters, digits, _")
    new.add_argument("--dir", type=Path, default=None, help="parent folder")
    _verbose_option(new, suppress=True)
    return parser


# Actions, not settings: every setting still comes from the TOML.
ACTION_FLAGS: dict[str, dict[str, str]] = {
    "prepare": {"--force": "prepare again even when the inputs and settings are unchanged"},
    "train": {"--fresh": "start a new run; the existing out_dir is renamed aside, not deleted"},
    "loop": {
        "--force": "prepare again even when the inputs and settings are unchanged",
        "--fresh": "start a new run; the existing out_dir is renamed aside, not deleted",
    },
}


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return number


def _complete_experiments(**_: object) -> list[str]:
    """Shell completion of EXPERIMENT: the names `list` shows."""
    return [experiment.name for experiment in list_experiments()]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("ml-playground")
    except PackageNotFoundError:
        return "unknown (not installed)"
