"""Delimited tables (',', ';' or tab separated), streamed row by row, damage counted.

Speech corpora arrive as CSV files of many gigabytes with inconsistent headers, so a
table is read lazily, its delimiter is taken from the header line, and columns are found
by meaning: each wanted column has a list of accepted header names, compared without
case, spaces, '_' or '-'. A row whose whole content sits in one quoted field (a known
defect of SpeakGer's mapping file) is unpacked and counted as repaired; any other row
with the wrong number of fields is counted as malformed with its line, never dropped
without a trace.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml_playground.artifacts import Artifact
from ml_playground.errors import DataError

DELIMITERS = (",", ";", "\t")
MAX_EXAMPLES = 10  # kept in meta.json
SHOWN_EXAMPLES = 3  # of those, shown on the console
HEADER_PROBE_BYTES = 1 << 16
# Speeches can be long; csv's default field limit (128 KiB) would reject real ones.
FIELD_SIZE_LIMIT = 1 << 30

Aliases = Mapping[str, Sequence[str]]


@dataclass
class RowCounts:
    """What happened to the rows read: repaired and malformed ones, with examples."""

    read: int = 0
    repaired: int = 0
    malformed: Counter[str] = field(default_factory=Counter[str])
    examples: list[str] = field(default_factory=list[str])

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def add_malformed(self, origin: str, reason: str, detail: str = "") -> None:
        self.malformed[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{origin}: {reason}{f' ({detail})' if detail else ''}")

    def shown_examples(self, joiner: str = "\n  e.g. ") -> str:
        """The first few damaged rows, each after `joiner`, for an outcome or error line."""
        return "".join(f"{joiner}{example}" for example in self.examples[:SHOWN_EXAMPLES])

    def tally(self) -> RowTally:
        return RowTally(
            read=self.read,
            repaired=self.repaired,
            malformed=dict(sorted(self.malformed.items())),
            examples=tuple(self.examples),
        )


def counted(counter: Counter[str]) -> str:
    """Counts by reason, the most frequent first: "3 not JSON, 1 empty 'text'"."""
    return ", ".join(f"{count:,} {reason}" for reason, count in counter.most_common())


class RowTally(Artifact):
    """Row counts, as a dataset's meta.json records them."""

    read: int
    repaired: int
    malformed: dict[str, int]
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """One data row: its origin ("path:line") and the value of each column found."""

    origin: str
    values: Mapping[str, str]

    def get(self, column: str) -> str:
        """The stripped value, or "" when the table has no such column."""
        return self.values.get(column, "")


def normalize_header(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.strip().casefold())


def read_rows(
    path: Path,
    aliases: Aliases,
    *,
    required: Sequence[str],
    counts: RowCounts,
    advance: Callable[[int], object] = lambda _: None,
) -> Iterator[Row]:
    """Stream the rows of `path`, its columns renamed to the keys of `aliases`; `advance`
    receives the bytes consumed since its last call (for a progress bar). A missing
    required column is an error naming the columns the file does have."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_SIZE_LIMIT))
    line = 0
    try:
        with path.open("rb") as raw:
            # The delimiter the header line holds most of (',' when it holds none).
            header_line = raw.readline(HEADER_PROBE_BYTES).decode("utf-8-sig", errors="replace")
            delimiter = max(DELIMITERS, key=header_line.count)
            raw.seek(0)
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            reader = csv.reader(text, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty; it needs a header line and rows")
            columns = _find_columns(path, header, aliases, required)
            reported = 0
            for cells in reader:
                line = reader.line_num
                if not cells:
                    continue  # a blank line is not a row
                counts.read += 1
                origin = f"{path}:{line}"
                fitted = _fitted(cells, len(header), delimiter)
                if fitted is None:
                    counts.add_malformed(
                        origin,
                        "wrong number of fields",
                        f"{len(cells)} fields, the header has {len(header)}",
                    )
                    continue
                if fitted is not cells:
                    counts.repaired += 1
                yield Row(origin, {name: fitted[index].strip() for name, index in columns.items()})
                # The text layer reads the file in chunks: the position moves once a chunk.
                if (position := raw.tell()) != reported:
                    advance(position - reported)
                    reported = position
            advance(raw.tell() - reported)
    except UnicodeDecodeError:
        raise DataError(
            f"{path} is not valid UTF-8 (near line {line + 1}); convert it to UTF-8"
        ) from None
    except csv.Error as exc:
        raise DataError(
            f"{path}:{line + 1} is not readable as CSV ({exc}); fix or remove that line"
        ) from None
    except FileNotFoundError:
        raise DataError(f"table not found: {path}; fix the path") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _find_columns(
    path: Path, header: Sequence[str], aliases: Aliases, required: Sequence[str]
) -> dict[str, int]:
    positions = {normalize_header(name): index for index, name in enumerate(header)}
    found: dict[str, int] = {}
    for column, names in aliases.items():
        indexes = [positions[key] for key in map(normalize_header, names) if key in positions]
        if indexes:
            found[column] = indexes[0]
    for column in required:
        if column not in found:
            raise DataError(
                f"{path} has no {column} column (looked for {', '.join(aliases[column])}); "
                f"its columns are {', '.join(header)}; rename the column"
            )
    return found


def _fitted(cells: list[str], width: int, delimiter: str) -> list[str] | None:
    """`cells` when it has `width` fields, else the fields of a row quoted as a whole, if
    that is what it is."""
    if len(cells) == width:
        return cells
    if len(cells) != 1 or width < 2 or delimiter not in cells[0]:
        return None
    parsed = list(csv.reader([cells[0]], delimiter=delimiter))
    inner = parsed[0] if parsed else []
    return inner if len(inner) == width else None
