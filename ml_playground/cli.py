"""The command line: parse arguments, load the experiment, call one pipeline step.

Thin on purpose. Each verb's flags become its step's options (`pipeline.PrepareOptions`,
...); which backend runs (from-scratch GPT or Hugging Face LoRA) follows from the config's
content (`ml_playground.backends`); this module never names an experiment. Every
`UserError` becomes one `error: ...` line on stderr and exit code 2; Ctrl-C becomes exit
code 130 after the running step has saved what it must.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import io
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import argcomplete

from ml_playground import console, experiments, pipeline
from ml_playground.config_loader import LoadedConfig, load_config
from ml_playground.errors import SavedAndStopped, UsageError, UserError
from ml_playground.experiments import Experiment, find_experiment, list_experiments

EXIT_OK = 0
EXPERIMENT_PLACEHOLDER = "<experiment>"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# What a shell reports for a program its reader stopped (128 + SIGPIPE), as for `yes | head`.
EXIT_BROKEN_PIPE = 141

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
    errno.EFBIG: f"the file is larger than the file system allows; write elsewhere ({_KEPT})",
    errno.EIO: f"the disk reported an I/O error; check it and run again ({_KEPT})",
}
# A write a library cut short without an errno (numpy's on a full disk): atomic.naming
# gives it the file's name, which is how such an error is told from a bug.
FAILED_WRITE_REMEDY = (
    f"the write was cut short, most likely by a full disk; free some space and run again ({_KEPT})"
)

# A verb's step, called with the parsed arguments it builds its options from.
StepFn = Callable[[Experiment, LoadedConfig, argparse.Namespace], None]

STEPS: dict[str, tuple[StepFn, str]] = {
    "prepare": (
        lambda e, c, a: pipeline.prepare(e, c, pipeline.PrepareOptions(force=a.force)),
        "tokenize the experiment's raw data into dataset_dir",
    ),
    "inspect": (
        lambda e, c, a: pipeline.inspect(e, c, pipeline.InspectOptions(windows=a.n)),
        "show the prepared dataset as training reads it: counts, the first training windows "
        "with their targets marked, and warnings about the loss mask",
    ),
    "train": (
        lambda e, c, a: pipeline.train(e, c, pipeline.TrainOptions(fresh=a.fresh)),
        "train (or resume) the model; checkpoints, TensorBoard logs and meta go to out_dir",
    ),
    "sample": (
        lambda e, c, _: pipeline.sample(e, c),
        "generate text from the best (else last) checkpoint; streams and saves to out_dir/samples",
    ),
    "chat": (
        lambda e, c, _: pipeline.chat(e, c),
        "talk to the trained model: one streamed reply per line read (a terminal or a pipe)",
    ),
    "loop": (
        lambda e, c, a: pipeline.loop(e, c, pipeline.LoopOptions(force=a.force, fresh=a.fresh)),
        "prepare, then train (resuming if a checkpoint exists), then sample",
    ),
    "report": (
        lambda e, c, _: pipeline.report(e, c),
        "rebuild out_dir/report.md and loss.png (written by train) from the TensorBoard events",
    ),
    "export": (
        lambda e, c, _: pipeline.export(e, c),
        "export the trained model to GGUF and an Ollama Modelfile ([export.ollama])"
        " and a Hugging Face folder ([export.hf])",
    ),
    "eval": (
        lambda e, c, a: pipeline.evaluate(e, c, pipeline.EvalOptions(text=a.text)),
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
            verbs = [*STEPS, *ALIASES, "compare", "list", "new"]
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ml-playground",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_options(parser, suppress=False)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, summary) in STEPS.items():
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


def run(argv: Sequence[str]) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser)
    args = parser.parse_args(list(argv))
    verb = str(args.verb)
    verb = ALIASES.get(verb, verb)
    if verb in {"list", "new", "compare"}:
        _reject_ignored_options(args, verb)
    if verb == "compare":
        _compare(args)
        return EXIT_OK
    if verb == "list":
        _print_experiments()
        return EXIT_OK
    if verb == "new":
        created = experiments.new_experiment(args.name, args.dir)
        print(f"created experiment {args.name} in {created}")
        # By name where the lookup finds this folder; elsewhere (--dir) only its path works.
        found = [e for e in list_experiments() if e.directory.resolve() == created.resolve()]
        handle = args.name if found else shlex.quote(str(created))
        print(f"next: edit {created / 'config.toml'}, then `ml-playground loop {handle}`")
        return EXIT_OK
    experiment = find_experiment(args.experiment)
    config_path: Path = args.exp_config or experiment.config_path
    loaded = load_config(config_path, experiment.directory)
    if args.print_config:
        # A dry run: the text is valid TOML that --exp-config accepts as it is.
        print(f"# effective config of {experiment.name} ({config_path})")
        print(loaded.to_toml(), end="")
        return EXIT_OK
    step, _ = STEPS[verb]
    step(experiment, loaded, args)
    return EXIT_OK


MIN_COMPARED = 2


def _compare(args: argparse.Namespace) -> None:
    if len(args.runs) < MIN_COMPARED:
        raise UsageError(
            "compare needs two or more runs (experiment names or folders, or out_dirs)"
        )
    pipeline.compare(list(args.runs), args.out)


def _reject_ignored_options(args: argparse.Namespace, verb: str) -> None:
    """`list`, `new` and `compare` read no config: an option they would ignore is a mistake."""
    for option, given in (("--exp-config", args.exp_config), ("--print-config", args.print_config)):
        if given:
            raise UsageError(f"`{verb}` takes no {option}; it reads no experiment config")


def _print_experiments() -> None:
    for entry in experiments.experiment_states():
        state = ", ".join(entry.state) or "not prepared"
        print(f"{entry.experiment.name:<28} {entry.experiment.description}")
        print(f"{'':<28} {entry.experiment.directory}  [{state}]")


def _invocation(argv: Sequence[str]) -> str | None:
    """How the user named the experiment, for hints: `NAME [--exp-config PATH]`."""
    try:
        args, _ = build_parser().parse_known_args(list(argv))
    except (UsageError, SystemExit):
        return None
    name = getattr(args, "experiment", None)
    if name is None:
        return None
    parts = [shlex.quote(str(name))]
    if getattr(args, "exp_config", None) is not None:
        parts += ["--exp-config", shlex.quote(str(args.exp_config))]
    return " ".join(parts)


def _file_system_remedy(exc: OSError) -> str | None:
    """What the user can do about `exc`; None for an error only a bug explains."""
    if exc.errno is None:
        return FAILED_WRITE_REMEDY if exc.filename else None
    remedy = FILE_SYSTEM_REMEDIES.get(exc.errno)
    if exc.errno == errno.EIO and not exc.filename:
        return None  # no file to name: where it came from is only in the traceback
    return remedy


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
        message = str(exc)
        if EXPERIMENT_PLACEHOLDER in message:
            # Deep code cannot know how the user named the experiment; the CLI does.
            invocation = _invocation(arguments)
            if invocation is not None:
                message = message.replace(EXPERIMENT_PLACEHOLDER, invocation)
        print(f"error: {message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader of stdout stopped early (`| head`): end quietly, as shell tools do.
        console.silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        remedy = _file_system_remedy(exc)
        if remedy is None:
            raise
        if verbose:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; {remedy}", file=sys.stderr)
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
