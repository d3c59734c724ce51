"""Test configs as dotted keys (`"train.model.n_layer": 2`), written as TOML by tomli_w.

A value may also be a whole table (`{"export.ollama": {"enabled": True}}`), so a builder
can take one section's overrides as a dict; both spellings land in the same TOML table.
This is the one TOML writer of the tests: none writes TOML text by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

TomlScalar = str | int | float | bool
TomlValue = TomlScalar | Sequence[TomlScalar]
Settings = Mapping[str, "TomlValue | Settings"]


def _merge(tree: dict[str, Any], key: str, value: TomlValue | Settings) -> None:
    *tables, leaf = key.split(".")
    node = tree
    for table in tables:
        node = node.setdefault(table, {})
    if isinstance(value, Mapping):
        # Over an earlier table it merges; over an earlier value it replaces it, as a leaf does.
        if not isinstance(node.get(leaf), dict):
            node[leaf] = {}
        for inner, inner_value in value.items():
            _merge(node[leaf], inner, inner_value)
    else:
        node[leaf] = value


def dotted_toml(settings: Settings) -> str:
    """`{"train.model.n_layer": 2}` as `[train.model]` `n_layer = 2`, tables as first seen."""
    tree: dict[str, Any] = {}
    for key, value in settings.items():
        _merge(tree, key, value)
    return tomli_w.dumps(tree)


def write_toml(path: Path, settings: Settings) -> Path:
    """`settings` (dotted keys) as the TOML file `path`, its folder made; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dotted_toml(settings), encoding="utf-8")
    return path
