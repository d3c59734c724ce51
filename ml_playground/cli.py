"""The command line: parse arguments, load the experiment, call one pipeline step.

Thin on purpose. The verbs, their flags and their help are `cli_parser.py`'s; each verb's
flags become its step's options (`options.PrepareOptions`, ...); which backend runs
(from-scratch GPT or Hugging Face LoRA) follows from the config's content
(`ml_playground.backends`); this module never names an experiment. Every `UserError`
becomes one `error: ...` line on stderr and exit code 2; Ctrl-C becomes exit code 130
after the running step has saved what it must.
"""

from __future__ import annotations

import argparse
import errno
import io
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import argcomplete

from ml_playground import console, experiments, options, pipeline
from ml_playground.cli_parser import ALIASES, OWN_VERBS, build_parser
from ml_playground.config_loader import LoadedConfig, load_config
from ml_playground.errors import SavedAndStopped, UsageError, UserError
from ml_playground.experiments import Experiment, find_experiment, list_experiments

EXIT_OK = 0
EXPERIMENT_PLACEHOLDER = "<experiment>"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# What a shell reports for a program its reader stopped (128 + SIGPIPE), as for `yes | head`.
EXIT_BROKEN_PIPE = 141

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
        lambda e, c, a: pipeline.prepare(e, c, options.PrepareOptions(force=a.force)),
        "tokenize the experiment's raw data into dataset_dir",
    ),
    "inspect": (
        lambda e, c, a: pipeline.inspect(e, c, options.InspectOptions(windows=a.n)),
        "show the prepared dataset as training reads it: counts, the first training windows "
        "with their targets marked, and warnings about the loss mask",
    ),
    "train": (
        lambda e, c, a: pipeline.train(e, c, options.TrainOptions(fresh=a.fresh)),
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
        lambda e, c, a: pipeline.loop(e, c, options.LoopOptions(force=a.force, fresh=a.fresh)),
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
        lambda e, c, a: pipeline.evaluate(e, c, options.EvalOptions(text=a.text)),
        "measure the trained model (loss, perplexity, bits per byte; base vs fine-tuned for "
        "LoRA) on the val split or --text FILE; writes out_dir/eval/",
    ),
}


def _parser() -> argparse.ArgumentParser:
    return build_parser({verb: summary for verb, (_, summary) in STEPS.items()})


def run(argv: Sequence[str]) -> int:
    parser = _parser()
    argcomplete.autocomplete(parser)
    args = parser.parse_args(list(argv))
    verb = str(args.verb)
    verb = ALIASES.get(verb, verb)
    if verb in OWN_VERBS:
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
        args, _ = _parser().parse_known_args(list(argv))
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
            "interrupted; nothing new was saved, the files already there are as they were",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
