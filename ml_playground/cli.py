"""The command line: parse arguments, load the experiment, call one pipeline step.

Thin on purpose. Which pipeline runs (from-scratch GPT or Hugging Face LoRA) follows from
the config's content inside `ml_playground.pipeline`; this module never names an
experiment. Every `UserError` becomes one `error: ...` line on stderr and exit code 2;
Ctrl-C becomes exit code 130 after the running step has saved what it must.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import io
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ml_playground import pipeline
from ml_playground.config import LoadedConfig, load_config
from ml_playground.errors import SavedAndStopped, UsageError, UserError
from ml_playground.experiments import Experiment, find_experiment, list_experiments

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
ml-playground: prepare text, train small GPTs from scratch, fine-tune Hugging Face models
with LoRA, sample from them and export them to GGUF/Ollama. One experiment = one folder
(ml_playground/experiments/<name>/) with a config.toml.

typical run:
  ml-playground list                      # what experiments exist
  ml-playground loop shakespeare          # prepare -> train -> sample
  ml-playground sample shakespeare        # sample again from the best checkpoint
"""

EPILOG = """\
EXPERIMENT is a registered name (see `ml-playground list`) or a path to a folder holding a
config.toml. --exp-config replaces the experiment's config.toml (the project defaults in
experiments/default_config.toml still apply underneath). Relative paths in a config
resolve against the folder of the file that sets them.

exit codes: 0 success, 2 user error (message on stderr), 130 interrupted (checkpoint saved).
"""

# File-system problems a user can fix. Writes are atomic, so the files there before are intact.
_KEPT = "the files already there are intact"
FILE_SYSTEM_REMEDIES: dict[int, str] = {
    errno.ENOSPC: f"the disk is full; free some space and run again ({_KEPT})",
    errno.EDQUOT: f"the disk quota is used up; free some space and run again ({_KEPT})",
    errno.EROFS: f"the file system is read-only; point the config at a writable folder ({_KEPT})",
    errno.EACCES: f"make the folder writable or point the config elsewhere ({_KEPT})",
    errno.EPERM: f"make the folder writable or point the config elsewhere ({_KEPT})",
    errno.ENOTDIR: "a path in the way is a file, not a folder; fix the path in the config",
    errno.EEXIST: "a file stands where a folder should be; fix the path in the config",
    errno.EISDIR: "a path in the way is a folder, not a file; fix the path in the config",
}

StepFn = Callable[[Experiment, LoadedConfig], None]

STEPS: dict[str, tuple[StepFn, str]] = {
    "prepare": (pipeline.prepare, "tokenize the experiment's raw data into dataset_dir"),
    "train": (
        pipeline.train,
        "train (or resume) the model; checkpoints, TensorBoard logs and meta go to out_dir",
    ),
    "sample": (
        pipeline.sample,
        "generate text from the best (else last) checkpoint; streams and saves to out_dir/samples",
    ),
    "loop": (pipeline.loop, "prepare, then train (resuming if a checkpoint exists), then sample"),
    "export": (
        pipeline.export,
        "export the trained model to GGUF and an Ollama Modelfile ([export.ollama])",
    ),
    "eval": (
        pipeline.evaluate,
        "measure the trained model (loss, perplexity, bits per byte; base vs fine-tuned for "
        "LoRA) on the val split or --text FILE; writes out_dir/eval/",
    ),
}
ALIASES = {"convert": "export"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error: ...` line like every other error."""

    def error(self, message: str) -> NoReturn:
        choice = INVALID_CHOICE.search(message)
        if choice is not None and self._subparsers is not None:
            verbs = [*STEPS, *ALIASES, "list", "new"]
            close = difflib.get_close_matches(choice["value"], verbs, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(
                f"unknown verb {choice['value']!r}; {hint}the verbs are {', '.join(verbs)} "
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
        help="print the effective config, each key tagged with where it came from",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default_false,
        help="show tracebacks for errors",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ml-playground",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, suppress=False)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, summary) in STEPS.items():
        aliases = [alias for alias, target in ALIASES.items() if target == verb]
        sub = verbs.add_parser(
            verb,
            aliases=aliases,
            help=summary,
            description=f"{summary}.",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("experiment", metavar="EXPERIMENT", help="experiment name or folder")
        if verb == "eval":
            sub.add_argument(
                "--text",
                type=Path,
                metavar="FILE",
                default=None,
                help="score this UTF-8 text file instead of the val split",
            )
        _global_options(sub, suppress=True)
    listing = verbs.add_parser(
        "list",
        help="list the experiments with a one-line description",
        description="List experiments.",
    )
    _global_options(listing, suppress=True)
    new = verbs.add_parser(
        "new",
        help="scaffold a new experiment folder from the template",
        description=(
            "Create ml_playground/experiments/NAME/ (or DIR/NAME with --dir) with a working "
            "config.toml, prepare.py and Readme.md copied from the template."
        ),
    )
    new.add_argument("name", metavar="NAME", help="experiment name: lowercase letters, digits, _")
    new.add_argument("--dir", type=Path, default=None, help="parent folder (default: the package)")
    _global_options(new, suppress=True)
    return parser


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    verb = str(args.verb)
    verb = ALIASES.get(verb, verb)
    if verb == "list":
        for experiment in list_experiments():
            print(f"{experiment.name:<28} {experiment.description}")
        return EXIT_OK
    if verb == "new":
        created = pipeline.new_experiment(args.name, args.dir)
        print(f"created experiment {args.name} in {created}")
        print(f"next: edit {created / 'config.toml'}, then `ml-playground loop {created}`")
        return EXIT_OK
    experiment = find_experiment(args.experiment)
    config_path: Path = args.exp_config or experiment.config_path
    loaded = load_config(config_path, experiment.directory)
    if args.print_config:
        print(f"# effective config of {experiment.name} ({config_path})")
        for line in loaded.describe():
            print(line)
    if verb == "eval":
        pipeline.evaluate(experiment, loaded, text=args.text)
        return EXIT_OK
    step, _ = STEPS[verb]
    step(experiment, loaded)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Progress lines should reach a pipe or log file as they happen, not in 8 KB blocks.
    stdout: object = sys.stdout
    if isinstance(stdout, io.TextIOWrapper):
        stdout.reconfigure(line_buffering=True)
    verbose = "-v" in arguments or "--verbose" in arguments
    try:
        return run(arguments)
    except UserError as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        remedy = FILE_SYSTEM_REMEDIES.get(exc.errno or 0)
        if remedy is None:
            raise
        if verbose:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror}{where}; {remedy}", file=sys.stderr)
        return EXIT_USER_ERROR
    except SavedAndStopped as stopped:
        print(
            f"interrupted; saved {stopped.saved}, run the same command to resume", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        # Stopped at once (a second Ctrl-C, or a step that saves nothing): files are as the
        # last completed write left them; atomic writes never leave half a file.
        print(
            "interrupted; nothing new was saved, files written before are as they were",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
