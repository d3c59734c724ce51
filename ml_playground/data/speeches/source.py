"""Speeches from their sources: .txt files (one speech each) and speeches CSV tables.

SPEECH_COLUMNS names the columns of SpeakGer's and Open Discourse's speeches tables, as
../table.py finds them by meaning; SpeakGer member tables in a CSV's folder fill in names
and parties (members.py). A value that cannot be read (a date like "next week") leaves
that value unknown and is counted; a row without speech text is counted as malformed and
left out.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ml_playground.config import PrepareConfig
from ml_playground.data.sources import raw_text_file
from ml_playground.data.speeches.members import (
    CSV_SUFFIX,
    MEMBER_FILES,
    META_FILE,
    Members,
    display_party,
    load_members,
    normalize_mpid,
    parse_int,
)
from ml_playground.data.speeches.speech import Speech
from ml_playground.data.table import Row, RowCounts, RowTally, counted, read_rows
from ml_playground.errors import DataError

DEFAULT_RAW_DIR = "raw"

SPEECH_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "text": ("Speech", "speechContent", "Text", "Content", "Rede", "SpeechText", "Redetext"),
    "speaker": ("Speaker", "SpeakerName", "Name", "Redner", "Sprecher"),
    "first_name": ("firstName", "Vorname"),
    "last_name": ("lastName", "Nachname"),
    "party": ("Party", "Partei", "Faction", "Fraktion"),
    "date": ("Date", "Datum"),
    "period": ("Period", "electoralTerm", "Wahlperiode", "Legislature"),
    "chair": ("Chair", "isChair"),
    "interjection": ("Interjection", "isInterjection", "Zwischenruf"),
    "mpid": ("MPID", "politicianId", "SpeakerID"),
    "topic": ("Topic", "Thema", "AgendaItem", "Agenda", "Title", "Tagesordnungspunkt"),
    "state": ("State", "Parliament", "Bundesland"),
    "position": ("positionShort", "Position", "Role"),
}
TRUE_FLAGS = frozenset({"true", "1", "1.0", "yes", "y", "t", "ja", "wahr", "x"})
FALSE_FLAGS = frozenset({"", "false", "0", "0.0", "no", "n", "f", "nein", "falsch"})
# Open Discourse marks the presiding officer by position, not by a flag.
CHAIR_POSITIONS = frozenset({"presidium of parliament", "präsident", "präsidentin", "präsidium"})
# Open Discourse replaces interjections inside a speech with "({12})" placeholders.
PLACEHOLDER = re.compile(r"\(\{\d+\}\)")
EXCESS_BLANK_LINES = re.compile(r"\n{3,}")
DATE_SPELLINGS = ("%Y-%m-%d", "%d.%m.%Y")

T = TypeVar("T")


@dataclass
class ReadReport(RowCounts):
    """Everything that happened to the input, beyond the speech rows' counts: nothing is
    dropped without being counted."""

    member_rows: RowCounts = field(default_factory=RowCounts)
    unreadable: Counter[str] = field(default_factory=Counter[str])
    skipped: Counter[str] = field(default_factory=Counter[str])
    unknown_mpids: int = 0
    kept: int = 0

    def summary(self) -> str:
        parts = [f"{self.read:,} rows read", f"{self.kept:,} speeches kept"]
        if self.skipped:
            parts.append("skipped " + counted(self.skipped))
        if self.malformed:
            parts.append(f"{self.malformed_total:,} malformed ({counted(self.malformed)})")
        if self.repaired:
            parts.append(f"{self.repaired:,} repaired (quoted as a whole)")
        if self.unreadable:
            parts.append("unreadable values kept as unknown: " + counted(self.unreadable))
        if self.member_rows.repaired or self.member_rows.malformed:
            parts.append(
                f"member tables: {self.member_rows.repaired:,} rows repaired, "
                f"{self.member_rows.malformed_total:,} malformed"
            )
        if self.unknown_mpids:
            parts.append(f"{self.unknown_mpids:,} MPIDs not in {META_FILE}")
        return "; ".join(parts)

    def tally(self) -> ReadTally:
        return ReadTally(
            **super().tally().model_dump(),
            kept=self.kept,
            skipped=dict(sorted(self.skipped.items())),
            undecodable_values=dict(sorted(self.unreadable.items())),
            unknown_mpids=self.unknown_mpids,
            member_tables=self.member_rows.tally(),
        )


class ReadTally(RowTally):
    """What happened to the rows of the speech sources, as meta.json records it."""

    kept: int
    skipped: dict[str, int]
    undecodable_values: dict[str, int]
    unknown_mpids: int
    member_tables: RowTally


def speech_sources(prepare: PrepareConfig, suffixes: frozenset[str]) -> list[Path]:
    """The files to read: raw_text_path, else every matching file below raw_dir (by default
    dataset_dir/raw/), never SpeakGer's member tables: they are metadata, not speeches."""
    kinds = " or ".join(sorted(suffixes))
    if prepare.raw_text_path is not None:
        path = raw_text_file(prepare.raw_text_path)
        if path.suffix.lower() not in suffixes:
            raise DataError(f"prepare.raw_text_path {path} is not a {kinds} file")
        return [path]
    folder = prepare.raw_dir or prepare.dataset_dir / DEFAULT_RAW_DIR
    if not folder.is_dir():
        raise DataError(
            f"no speeches to prepare: {folder} does not exist; put {kinds} files there, or set "
            "[prepare] raw_dir (a folder) or raw_text_path (one file)"
        )
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in suffixes and path.name not in MEMBER_FILES
    )
    if not files:
        raise DataError(f"no {kinds} files found under {folder}; put the speeches there")
    return files


def read_speeches(
    sources: Sequence[Path],
    report: ReadReport,
    *,
    advance: Callable[[int], object] = lambda _: None,
) -> Iterator[Speech]:
    """Every speech in `sources`, in order; malformed rows are counted in `report`."""

    @functools.cache
    def members(folder: Path) -> Members:
        return load_members(folder, report.member_rows)

    for path in sources:
        if path.suffix.lower() == CSV_SUFFIX:
            yield from _table_speeches(path, members(path.parent), report, advance)
        else:
            yield from _text_speech(path, report, advance)


def _text_speech(
    path: Path, report: ReadReport, advance: Callable[[int], object]
) -> Iterator[Speech]:
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid UTF-8 at byte {exc.start}; convert it to UTF-8"
        ) from None
    advance(len(raw))
    report.read += 1
    cleaned = clean_text(text)
    if not cleaned:
        report.add_malformed(str(path), "empty speech text")
        return
    yield Speech(text=cleaned, origin=str(path))


def _table_speeches(
    path: Path, members: Members, report: ReadReport, advance: Callable[[int], object]
) -> Iterator[Speech]:
    rows = read_rows(path, SPEECH_COLUMNS, required=("text",), counts=report, advance=advance)
    stem_state = path.stem if path.stem in members.states else None
    for row in rows:
        text = clean_text(row.get("text"))
        if not text:
            report.add_malformed(row.origin, "empty speech text")
            continue
        mpid = normalize_mpid(row.get("mpid"))
        if mpid and members.names and mpid not in members.names:
            report.unknown_mpids += 1
        period = _cell(row, "period", parse_int, report)
        state = row.get("state") or stem_state
        date, year = _cell(row, "date", parse_date, report) or (None, None)
        party = display_party(row.get("party")) or members.party_of(mpid, state, period)
        names = (row.get("first_name"), row.get("last_name"))
        speaker = row.get("speaker") or " ".join(name for name in names if name)
        yield Speech(
            text=text,
            origin=row.origin,
            speaker=speaker or members.names.get(mpid),
            party=party or None,
            topic=row.get("topic") or None,
            date=date,
            year=year,
            period=period,
            state=state or None,
            chair=bool(_cell(row, "chair", parse_flag, report))
            or row.get("position").casefold() in CHAIR_POSITIONS,
            interjection=bool(_cell(row, "interjection", parse_flag, report)),
        )


def clean_text(text: str) -> str:
    """Unified newlines, no placeholders, at most one blank line in a row, trimmed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = PLACEHOLDER.sub("", text)
    return EXCESS_BLANK_LINES.sub("\n\n", text).strip()


def parse_date(value: str) -> tuple[datetime.date | None, int | None] | None:
    """(date, year) from ISO (with or without time), DD.MM.YYYY or a bare year; (None, None)
    for an empty cell, None when the cell holds something else."""
    value = value.strip()
    if not value:
        return None, None
    if re.fullmatch(r"\d{4}", value):
        return None, int(value)
    day = re.split(r"[T ]", value, maxsplit=1)[0]
    for spelling in DATE_SPELLINGS:
        try:
            date = datetime.datetime.strptime(day, spelling).date()
        except ValueError:
            continue
        return date, date.year
    return None


def parse_flag(value: str) -> bool | None:
    """True or False in the usual spellings; None when the cell holds something else."""
    folded = value.casefold()
    if folded in TRUE_FLAGS:
        return True
    return False if folded in FALSE_FLAGS else None


def _cell(row: Row, column: str, parse: Callable[[str], T | None], report: ReadReport) -> T | None:
    """The parsed cell; None when it is empty, or unreadable (then it is counted)."""
    value = row.get(column)
    if not value:
        return None
    parsed = parse(value)
    if parsed is None:
        report.unreadable[column] += 1
    return parsed
