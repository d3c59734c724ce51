"""`eval`: how well a trained model predicts text, as loss, perplexity and bits per byte.

What is scored: by default the val split the run validated on (the prepared dataset's
val.bin, with val.mask.bin for chat records, which count only the assistant's tokens, as
their training loss does), or any UTF-8 text file (`--text`).
A file gets the model's start token (BOS, else end-of-text) in front where it has one, so
its first token is scored too; a char GPT has none, and its first character is context.

How: the tokens are cut into non-overlapping windows of the model's context (block_size
for a GPT, the run's sequence length for fine-tuning), and each window predicts its
tokens from those before it in the window. Every target is thus scored exactly once and
in the same way the training loop's val loss scores its (random) windows; overlapping
windows would give early targets more context but cost context/stride times the work.
Every target of the split or file is scored, no cap: the number belongs to the whole
split and compares across runs; progress goes to stderr, and Ctrl-C writes nothing.

The numbers: loss is the total negative log-likelihood in nats over the number of
targets, perplexity its exp, bits per byte the total over ln 2 over the UTF-8 bytes of
the text the scored targets decode to (special tokens such as end-of-text or turn
markers are scored but decode to no bytes). Padded ids are masked as in sampling, so the
loss can sit a hair below the training loss, which normalises over them too. A LoRA run
is scored twice, with its adapters (fine-tuned) and with them disabled (base), and the
difference says whether fine-tuning helped.

The table goes to stdout; the same numbers, with what was scored, to out_dir/eval/val.json
or out_dir/eval/text/<file stem>.json (atomically); both are `sample/eval_result.py`'s.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F  # noqa: N812 - the conventional name

from ml_playground import run_folder
from ml_playground.artifacts import write_artifact
from ml_playground.config import ExperimentConfig
from ml_playground.data.batches import IGNORE_INDEX, open_mask, open_tokens
from ml_playground.data.dataset_meta import read_meta
from ml_playground.data.record_split import mask_file
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.digest import file_digest
from ml_playground.errors import DataError
from ml_playground.progress import count_progress
from ml_playground.sample.backend import Forward, LoadedModel, Scoring
from ml_playground.sample.eval_result import Difference, EvalResult, EvaluatedText, Score, table

MIN_TOKENS = 2  # one to read, one to predict
# Logits one forward pass may hold (64M: 256 MB in float32): a 50k vocabulary at a context
# of 1024 fits one window, a char vocabulary many; fewer if train.data.batch_size says so.
LOGITS_PER_BATCH = 1 << 26
TRAIN_FIRST = "train first with `ml-playground train <experiment>`"
WINDOWS = "non-overlapping windows of the model's context; each target scored once"


@dataclass(frozen=True)
class Tokens:
    """Ids to score; `counted` flags the targets that count (None: all after the first)."""

    ids: npt.NDArray[Any]
    counted: npt.NDArray[Any] | None
    source: Literal["val split", "text file"]
    path: Path
    sha256: str
    rule: str  # which targets count, in words

    @property
    def targets(self) -> int:
        if self.counted is None:
            return len(self.ids) - 1
        return int(np.count_nonzero(self.counted[1:]))


class Evaluated(Protocol):
    """What eval takes from the config's backend (`ml_playground.backends`)."""

    def require_trained(self, config: ExperimentConfig) -> None: ...

    def load(self, config: ExperimentConfig) -> LoadedModel: ...


def evaluate_run(config: ExperimentConfig, backend: Evaluated, text: Path | None) -> EvalResult:
    """Score the backend's trained model on the val split, or on the file `text`."""
    out_dir = config.sample.runtime.out_dir
    text = None if text is None else text.resolve()  # messages name the file unmistakably
    backend.require_trained(config)
    # Everything a user can get wrong is checked before the model loads for seconds.
    raw = read_text_file(text) if text is not None else None
    split = val_split(config) if text is None else None
    model = backend.load(config)
    scoring = model.scoring
    assert scoring is not None  # both backends fill it in; a new one must too
    if split is not None:
        tokens = split
        target = run_folder.eval_result(out_dir)
    else:
        assert text is not None and raw is not None
        tokens = encode_text(model, text, raw)
        target = run_folder.text_result(out_dir, text.stem)
    _check_vocabulary(tokens, scoring.vocab_size)
    if tokens.targets == 0:
        raise DataError(f"{tokens.path} holds no target that counts; nothing to score")
    print(f"evaluating {scoring.weights} on {tokens.path}")
    result = score_tokens(model, scoring, tokens, batch_size=config.train.data.batch_size)
    for line in table(result):
        print(line)
    write_artifact(target, result)
    print(f"saved {target}", file=sys.stderr)
    return result


# --- what is scored ------------------------------------------------------------------------


def read_text_file(path: Path) -> str:
    """The UTF-8 text of a `--text` file, or one error line saying what is wrong with it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"--text file not found: {path}; give the path of a UTF-8 text file"
        ) from None
    except IsADirectoryError:
        raise DataError(f"--text {path} is a folder; give the path of a UTF-8 text file") from None
    except OSError as exc:
        raise DataError(f"cannot read --text file {path} ({exc.strerror}); check it") from None
    if not data:
        raise DataError(f"--text file {path} is empty; give a file with text to score")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"--text file {path} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); convert it to UTF-8"
        ) from None


def encode_text(model: LoadedModel, path: Path, text: str) -> Tokens:
    """A file's ids, after the model's start token where it has one (see module docstring)."""
    ids = model.encode(text)
    start = model.first_id
    text_ids = len(ids) - (1 if ids and ids[0] == start else 0)
    if text_ids < MIN_TOKENS:
        raise DataError(
            f"--text file {path} is {text_ids} token(s) long; give at least {MIN_TOKENS} "
            "tokens of text to score"
        )
    if start is not None and ids[0] != start:
        ids = [start, *ids]
    rule = "every token of the file" if start is not None else "every token after the first"
    return Tokens(
        ids=np.asarray(ids, dtype=np.int64),
        counted=None,
        source="text file",
        path=path,
        sha256=file_digest(path),
        rule=rule,
    )


def val_split(config: ExperimentConfig) -> Tokens:
    """The val tokens the run validated on: the prepared dataset's val.bin, with its
    val.mask.bin where some tokens are not targets (chat records)."""
    data = config.train.data
    meta_path = data.dataset_dir / data.meta_file
    meta = read_meta(meta_path)  # missing, damaged or old: says to prepare
    if meta.tokenizer_spec is not None:  # a Hugging Face tokenizer is the run's own copy
        _check_trained_tokenizer(config, meta.tokenizer_spec, meta_path)
    path = data.dataset_dir / data.val_bin
    remedy = "run `ml-playground prepare <experiment>`"
    ids = _token_file(path, meta.dtype, remedy)
    if not meta.masked:
        return Tokens(
            ids, None, "val split", path, file_digest(path), "every token after the first"
        )
    counted = open_mask(data.dataset_dir / mask_file("val"), len(ids), path, remedy)
    rule = "assistant tokens only, as training counts them: val.mask.bin"
    return Tokens(ids, counted, "val split", path, file_digest(path), rule)


def _check_trained_tokenizer(
    config: ExperimentConfig, tokenizer: TokenizerSpec, meta_path: Path
) -> None:
    out_dir = config.sample.runtime.out_dir
    run = run_folder.read_run_meta_of(out_dir, run_folder.GPTRunMeta)
    if run is not None and run.tokenizer != tokenizer:
        raise DataError(
            f"dataset {meta_path} uses tokenizer {tokenizer.describe()} but the model in "
            f"{out_dir} was trained with {run.tokenizer.describe()}; prepare the dataset "
            "the run trained on, or train again"
        )


def _token_file(path: Path, dtype: str, remedy: str) -> npt.NDArray[Any]:
    if not path.exists():
        raise DataError(f"no prepared val split: {path} not found; {remedy}")
    ids = open_tokens(path, dtype, remedy)
    if len(ids) < MIN_TOKENS:
        raise DataError(
            f"the val split {path} holds {len(ids)} token(s), too few to score (at least "
            f"{MIN_TOKENS}); prepare more text"
        )
    return ids


def _check_vocabulary(tokens: Tokens, vocab_size: int) -> None:
    largest = int(tokens.ids.max())
    if largest >= vocab_size:
        raise DataError(
            f"{tokens.path} holds token id {largest}, outside the model's vocabulary of "
            f"{vocab_size}; it was made with another tokenizer than the model's"
        )


# --- scoring -------------------------------------------------------------------------------


def score_tokens(
    model: LoadedModel, scoring: Scoring, tokens: Tokens, *, batch_size: int
) -> EvalResult:
    """Score with the model as loaded and, for a LoRA run, with its adapters disabled."""
    context = scoring.context
    windows = -(-(len(tokens.ids) - 1) // context)
    per_batch = max(1, min(batch_size, LOGITS_PER_BATCH // (context * scoring.vocab_size)))
    text_bytes = target_bytes(model, tokens)
    weights = None if scoring.weights is None else str(scoring.weights)
    trained_label = "trained" if scoring.base is None else "fine-tuned"
    nll = total_nll(scoring.forward, tokens, context, per_batch, trained_label)
    scores = [_score(trained_label, weights, nll, tokens.targets, text_bytes)]
    difference = None
    if scoring.base is not None:
        with scoring.base():
            base_nll = total_nll(scoring.forward, tokens, context, per_batch, "base")
        base = _score("base (adapters off)", None, base_nll, tokens.targets, text_bytes)
        scores.append(base)
        difference = Difference(
            loss=scores[0].loss - base.loss,
            perplexity=scores[0].perplexity - base.perplexity,
            bits_per_byte=scores[0].bits_per_byte - base.bits_per_byte,
        )
    return EvalResult(
        evaluated=EvaluatedText(
            source=tokens.source,
            path=str(tokens.path),
            sha256=tokens.sha256,
            tokens=len(tokens.ids),
            targets=tokens.targets,
            bytes=text_bytes,
            counted=tokens.rule,
        ),
        window=context,
        windows=windows,
        method=WINDOWS,
        device=str(scoring.precision.device),
        dtype=scoring.precision.dtype_name,
        scores=tuple(scores),
        difference=difference,
    )


@torch.inference_mode()
def total_nll(forward: Forward, tokens: Tokens, context: int, per_batch: int, label: str) -> float:
    """The summed negative log-likelihood (nats) of every counted target, window by window."""
    total = 0.0
    with count_progress(f"eval {label}", tokens.targets, "targets") as advance:
        for x, y in _batches(tokens, context, per_batch):
            logits = forward(x).float()
            nll = F.cross_entropy(
                logits.flatten(0, 1),
                y.to(logits.device).flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(nll)
            advance(int((y != IGNORE_INDEX).sum()))
    return total


def _batches(
    tokens: Tokens, context: int, per_batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) of `per_batch` windows at a time: window k reads ids[k*context : +context]
    and predicts the ids one further on; the last, shorter window comes alone."""
    ids, counted = tokens.ids, tokens.counted
    starts = list(range(0, len(ids) - 1, context))
    full = [start for start in starts if start + context + 1 <= len(ids)]
    groups = [full[i : i + per_batch] for i in range(0, len(full), per_batch)]
    if len(full) < len(starts):
        groups.append(starts[len(full) :])
    for group in groups:
        span = min(context, len(ids) - 1 - group[0])
        windows = np.stack([np.asarray(ids[s : s + span + 1], dtype=np.int64) for s in group])
        targets = windows[:, 1:].copy()
        if counted is not None:
            flags = np.stack([np.asarray(counted[s + 1 : s + span + 1]) for s in group])
            targets[flags == 0] = IGNORE_INDEX
        yield torch.as_tensor(np.ascontiguousarray(windows[:, :-1])), torch.as_tensor(targets)


def target_bytes(model: LoadedModel, tokens: Tokens) -> int:
    """UTF-8 bytes of the text the counted targets decode to, run by run of adjacent ones."""
    ids = tokens.ids
    if tokens.counted is None:
        return len(model.decode(ids[1:].tolist()).encode("utf-8"))
    flags = np.asarray(tokens.counted, dtype=np.int8).copy()
    flags[0] = 0  # the first id has nothing before it and is never a target
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags, [0]))))
    runs = edges.reshape(-1, 2)
    return sum(len(model.decode(ids[start:end].tolist()).encode("utf-8")) for start, end in runs)


def _score(label: str, weights: str | None, nll: float, targets: int, text_bytes: int) -> Score:
    loss = nll / targets
    try:
        perplexity = math.exp(loss)
    except OverflowError:
        perplexity = math.inf
    bits_per_byte = nll / math.log(2) / text_bytes if text_bytes else math.inf
    return Score(
        model=label,
        weights=weights,
        targets=targets,
        nll_nats=nll,
        loss=loss,
        perplexity=perplexity,
        bits_per_byte=bits_per_byte,
    )
