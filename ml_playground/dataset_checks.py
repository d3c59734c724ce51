"""The checks `inspect` runs on a dataset: the silent failures of a loss mask and a template.

Each check returns at most one warning line, whatever the number of records it finds:
how many, and the first one's `path:line`, so a dataset with a systematic fault gives one
line per fault rather than one per record.

- an end-of-turn or end-of-sequence token right after an assistant turn (or a completion)
  that is not a target: the model never learns to stop;
- a record with no target at all: it costs context and teaches nothing;
- a chat template that renders two different conversations as the same text, seen in the
  dataset's own conversations and in two probes (conversations that differ only in their
  system message, and only in their user's words): what it drops never reaches the model;
- characters the tokenizer maps to its unknown id: the model sees them all as one token.

Windows that start in the middle of a record are no fault here: packing puts records end
to end and the batcher draws a window at any offset (data/batches.py), so `inspect` only
counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# transformers renders chat templates with jinja2, so it is there wherever they are.
from jinja2 import TemplateError

from ml_playground.data.rendering import ChatTokenizer
from ml_playground.inspect_windows import Window
from ml_playground.inspection import Dataset, Record, Split

# Probe conversations: within a pair, only the system message or the user's words differ.
PROBES: tuple[tuple[str, tuple[list[dict[str, str]], list[dict[str, str]]]], ...] = (
    (
        "differ only in their system message",
        (
            [
                {"role": "system", "content": "Antworte kurz."},
                {"role": "user", "content": "Wie spät ist es?"},
                {"role": "assistant", "content": "Zehn Uhr."},
            ],
            [
                {"role": "system", "content": "Antworte ausführlich."},
                {"role": "user", "content": "Wie spät ist es?"},
                {"role": "assistant", "content": "Zehn Uhr."},
            ],
        ),
    ),
    (
        "differ only in what the user says",
        (
            [
                {"role": "user", "content": "Wie spät ist es?"},
                {"role": "assistant", "content": "Zehn Uhr."},
            ],
            [
                {"role": "user", "content": "Welcher Tag ist heute?"},
                {"role": "assistant", "content": "Zehn Uhr."},
            ],
        ),
    ),
)
WARNING = "warning: "


def run_checks(dataset: Dataset) -> list[str]:
    """Every check's warning, one line each; empty when the dataset passes all."""
    found = [
        end_of_turn_not_target(dataset),
        records_without_target(dataset),
        same_rendering(dataset),
        *template_probes(dataset.chat_tokenizer),
        unknown_characters(dataset),
    ]
    return [WARNING + line for line in found if line is not None]


def end_of_turn_not_target(dataset: Dataset) -> str | None:
    """The token after a trained span that closes a turn (EOS, the template's end of turn)
    must itself be trained, or the model never learns to emit it."""
    if not dataset.closing_ids:
        return None
    hits: list[tuple[Record, int]] = []
    records = 0
    for split in dataset.splits:
        if split.mask is None:
            continue  # every token trains, the closing ones too
        for record in split.records:
            records += 1
            token = _untrained_closing(split, record, dataset.closing_ids)
            if token is not None:
                hits.append((record, token))
    if not hits:
        return None
    record, token = hits[0]
    return (
        f"the end-of-turn token {dataset.token_name(token)} that closes an assistant turn is "
        f"not a target in {len(hits):,} of {records:,} records (first: {record.location()}), so "
        "the model never learns to stop; use a chat template whose assistant turn includes "
        "it ([prepare] chat_template: put it inside {% generation %}) and prepare again"
    )


def _untrained_closing(split: Split, record: Record, closing: frozenset[int]) -> int | None:
    assert split.mask is not None
    mask = np.asarray(split.mask[record.start : record.end])
    tokens = np.asarray(split.tokens[record.start : record.end])
    trained = np.flatnonzero(mask)
    if not len(trained):
        return None  # a record without targets has its own check
    # Where a trained span ends, the next token is the one that closes it.
    span_ends = [int(i) + 1 for i in trained if int(i) + 1 >= len(mask) or not mask[int(i) + 1]]
    for end in span_ends:
        if end < len(tokens) and int(tokens[end]) in closing:
            return int(tokens[end])
    return None


def records_without_target(dataset: Dataset) -> str | None:
    empty: list[Record] = []
    records = 0
    for split in dataset.splits:
        if split.mask is None:
            continue
        for record in split.records:
            records += 1
            if not np.any(split.mask[record.start : record.end]):
                empty.append(record)
    if not empty:
        return None
    return (
        f"{len(empty):,} of {records:,} records have no target at all (first: "
        f"{empty[0].location()}): they fill windows and teach nothing; check the chat "
        "template's assistant turn (or the completion field) and prepare again"
    )


def same_rendering(dataset: Dataset) -> str | None:
    """Different conversations of the dataset that the template renders alike (a repeated
    conversation is no clash: it renders alike because it is alike)."""
    by_text: dict[str, dict[str, str]] = {}  # text -> conversation -> where it is first
    first_clash: tuple[str, str] | None = None
    clashes = 0
    for rendering in dataset.renderings:
        seen = by_text.setdefault(rendering.text, {})
        if rendering.conversation in seen:
            continue
        if seen:
            clashes += 1
            if first_clash is None:
                first_clash = (next(iter(seen.values())), rendering.where)
        seen[rendering.conversation] = rendering.where
    if first_clash is None:
        return None
    first, second = first_clash
    return (
        f"the chat template renders different conversations as the same text {clashes:,} "
        f"time(s) (first: {first} and {second}): what it drops never reaches the model; fix "
        "[prepare] chat_template and prepare again"
    )


def template_probes(tokenizer: ChatTokenizer | None) -> list[str | None]:
    """Probe conversation pairs the template must tell apart."""
    if tokenizer is None or not tokenizer.chat_template:
        return []
    found: list[str | None] = []
    for difference, (left, right) in PROBES:
        try:
            rendered = [
                str(tokenizer.apply_chat_template(c, tokenize=False)) for c in (left, right)
            ]
        except (ValueError, TemplateError):
            # A template may refuse a probe (raise_exception); then there is nothing to compare.
            found.append(None)
            continue
        found.append(
            None
            if rendered[0] != rendered[1]
            else (
                f"the chat template renders two conversations that {difference} as the same "
                "text, so that part never reaches the model; fix [prepare] chat_template"
            )
        )
    return found


def unknown_characters(dataset: Dataset) -> str | None:
    unknown = dataset.unknown_id
    if unknown is None:
        return None
    hits: list[Record] = []
    tokens = 0
    for split in dataset.splits:
        for record in split.records:
            count = int(
                np.count_nonzero(np.asarray(split.tokens[record.start : record.end]) == unknown)
            )
            if count:
                hits.append(record)
                tokens += count
    if not hits:
        return None
    first = hits[0]
    text = dataset.source_texts.get(first.source or "") if first.source else None
    chars = _unknown_chars(dataset, text or "", unknown)
    shown = f" ({', '.join(repr(c) for c in chars)})" if chars else ""
    return (
        f"{tokens:,} token(s) in {len(hits):,} record(s) are the unknown id {unknown}: the "
        f"tokenizer has no token for some characters{shown} (first: {first.location()}); "
        "replace them in the source or use a tokenizer that covers them"
    )


def _unknown_chars(dataset: Dataset, text: str, unknown: int) -> Sequence[str]:
    return sorted({char for char in set(text) if unknown in dataset.encode(char)})


def windows_mid_record(windows: Sequence[Window]) -> str | None:
    """How many of the shown windows start inside a record (information, not a fault)."""
    placed = [window for window in windows if window.record is not None]
    if not placed:
        return None
    inside = sum(window.starts_mid_record for window in placed)
    return (
        f"{inside} of {len(placed)} windows start inside a record: packing puts records end to "
        "end and the batcher starts a window at any offset, so this is expected"
    )
