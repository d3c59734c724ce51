"""Test configs as dotted keys (`"train.model.n_layer": 2`), written as TOML by tomli_w."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

TomlValue = str | int | float | bool | list[str] | list[int]


def dotted_toml(settings: Mapping[str, TomlValue]) -> str:
    """`{"train.model.n_layer": 2}` as `[train.model]` `n_layer = 2`, tables as first seen."""
    tree: dict[str, Any] = {}
    for key, value in settings.items():
        *tables, leaf = key.split(".")
        node = tree
        for table in tables:
            node = node.setdefault(table, {})
        node[leaf] = value
    return tomli_w.dumps(tree)


def write_toml(path: Path, settings: Mapping[str, TomlValue]) -> Path:
    """`settings` (dotted keys) as the TOML file `path`, its folder made; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dotted_toml(settings), encoding="utf-8")
    return path
