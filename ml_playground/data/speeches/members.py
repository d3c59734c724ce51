"""SpeakGer's member tables: who an MPID is, and which party they sat for when.

SpeakGer ships two tables next to its speeches: `all_mps_meta.csv` (';'-separated; MPID,
Name, LastName, Born, ...) and `all_mps_mapping.csv` (','-separated; MPID, State, Period,
Party, Constituency, ...). A speeches CSV with an MPID column is joined with whichever of
the two sits in its folder: the name becomes the speaker, the mapping's party fills in
where the speech has none. The mapping is keyed by parliament ("State": Bundestag or a
Land) and period; a speech whose parliament is unknown takes the party only when every
parliament the member sat in that period agrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml_playground.data.table import RowCounts, read_rows

CSV_SUFFIX = ".csv"
META_FILE = "all_mps_meta.csv"
MAPPING_FILE = "all_mps_mapping.csv"
MEMBER_FILES = frozenset({META_FILE, MAPPING_FILE})

META_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "mpid": ("MPID",),
    "name": ("Name",),
}
MAPPING_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "mpid": ("MPID",),
    "state": ("State", "Parliament"),
    "period": ("Period",),
    "party": ("Party",),
}

# The mapping spells parties in lower case; a header should read as a protocol does.
PARTY_DISPLAY: Mapping[str, str] = {
    "spd": "SPD",
    "cdu": "CDU",
    "csu": "CSU",
    "fdp": "FDP",
    "afd": "AfD",
    "die grünen": "BÜNDNIS 90/DIE GRÜNEN",
    "linke/pds/sed": "DIE LINKE",
    "kpd/dkp": "KPD",
    "npd": "NPD",
    "bp": "BP",
    "dp": "DP",
    "piraten": "PIRATEN",
    "zentrum": "Zentrum",
}


def normalize_mpid(value: str) -> str:
    """MPIDs as written by spreadsheets and pandas ("17", "17.0") compare equal."""
    return value.strip().removesuffix(".0")


def parse_int(value: str) -> int | None:
    """An integer cell ("19", "19.0"), or None when it is empty or not a whole number."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


@dataclass
class Members:
    """The joined member tables of one folder (empty when the folder has neither)."""

    names: dict[str, str] = field(default_factory=dict[str, str])
    # (MPID, period) -> the party of each seat, by parliament ("" where the row names none).
    seats: dict[tuple[str, int], dict[str, str]] = field(
        default_factory=dict[tuple[str, int], dict[str, str]]
    )
    states: set[str] = field(default_factory=set[str])

    def party_of(self, mpid: str, state: str | None, period: int | None) -> str | None:
        if period is None:
            return None
        seats = self.seats.get((mpid, period), {})
        if state is not None:
            return seats.get(state)
        parties = set(seats.values())
        return parties.pop() if len(parties) == 1 else None


def member_tables(sources: Sequence[Path]) -> list[Path]:
    """The member tables that will be joined with the CSVs among `sources` (they decide
    the records too), in a fixed order."""
    folders = sorted({path.parent for path in sources if path.suffix.lower() == CSV_SUFFIX})
    names = sorted(MEMBER_FILES)
    return [folder / name for folder in folders for name in names if (folder / name).is_file()]


def load_members(folder: Path, counts: RowCounts) -> Members:
    """Read the member tables in `folder`; their damaged rows are counted in `counts`."""
    members = Members()
    meta, mapping = folder / META_FILE, folder / MAPPING_FILE
    if meta.is_file():
        for row in read_rows(meta, META_COLUMNS, required=("mpid", "name"), counts=counts):
            if (mpid := normalize_mpid(row.get("mpid"))) and (name := row.get("name")):
                members.names[mpid] = name
    if mapping.is_file():
        required = ("mpid", "period", "party")
        for row in read_rows(mapping, MAPPING_COLUMNS, required=required, counts=counts):
            mpid, period = normalize_mpid(row.get("mpid")), parse_int(row.get("period"))
            party = display_party(row.get("party"))
            if not mpid or period is None or not party:
                counts.add_malformed(row.origin, "member row without MPID, period or party")
                continue
            state = row.get("state")
            members.seats.setdefault((mpid, period), {})[state] = party
            if state:
                members.states.add(state)
    return members


def display_party(value: str) -> str:
    value = value.strip()
    return PARTY_DISPLAY.get(value.casefold(), value)
