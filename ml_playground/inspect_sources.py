"""The sources of a chat records dataset, rendered again with the dataset's own tokenizer.

`inspect` matches the prepared records to the source rows they came from by their token
ids (inspection.py) and gives the checks (dataset_checks.py) the rendered text of every
conversation; when the sources cannot be read, a note says what is left out.
"""

from __future__ import annotations

import json
import typing
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ml_playground.config import ExperimentConfig
from ml_playground.data.chat_records import read_records, record_rows
from ml_playground.data.rendering import ChatTokenizer
from ml_playground.data.table import RowCounts
from ml_playground.errors import UserError


@dataclass(frozen=True)
class Rendering:
    """A source conversation as the dataset's chat template renders it (for the checks)."""

    where: str
    conversation: str  # the messages as canonical JSON: equal exactly for equal conversations
    text: str


def source_label(config: ExperimentConfig) -> str:
    prepare = config.prepare
    if prepare.hf_dataset is not None:
        return f"{prepare.hf_dataset} [{prepare.hf_dataset_split}] (Hugging Face dataset)"
    return str(prepare.records_path)


def rendered_sources(
    config: ExperimentConfig, tokenizer: ChatTokenizer, source_format: str, unknown: int | None
) -> tuple[dict[tuple[int, ...], list[str]], tuple[Rendering, ...], dict[str, str], str | None]:
    """The source rows' token ids (-> where each is), their renderings and the texts of
    rows with unknown ids; with a note instead when the sources cannot be read."""
    try:
        rows = record_rows(config).rows
        by_ids: dict[tuple[int, ...], list[str]] = defaultdict(list)
        renderings: list[Rendering] = []
        texts: dict[str, str] = {}
        fmt = typing.cast(Any, source_format)
        for where, raw in rows:
            records = list(read_records([(where, raw)], fmt, tokenizer, RowCounts()))
            if not records:
                continue  # a bad row: prepare counted and reported it
            ids = records[0].input_ids
            by_ids[ids].append(where)
            value = _decoded(raw)
            if source_format == "messages":
                messages = typing.cast(list[dict[str, str]], value["messages"])
                conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
                text = str(tokenizer.apply_chat_template(conversation, tokenize=False))
                renderings.append(Rendering(where, json.dumps(conversation), text))
            if unknown is not None and unknown in ids:
                texts[where] = "".join(_strings(value))
        return dict(by_ids), tuple(renderings), texts, None
    except UserError as exc:
        return (
            {},
            (),
            {},
            f"sources not read ({exc}); their locations and the template check are left out",
        )


def _decoded(raw: object) -> Mapping[str, Any]:
    value: object = json.loads(raw) if isinstance(raw, str) else raw
    return typing.cast(Mapping[str, Any], value)


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in typing.cast(Mapping[str, object], value).values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in typing.cast(list[object], value):
            yield from _strings(item)
