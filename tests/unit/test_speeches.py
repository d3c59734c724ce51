"""Reading speeches: column detection, the SpeakGer member join, filters, damage counted.

Speech tables are real CSV files written into tmp_path; member tables are slices of the
real SpeakGer files from the shared folder (or the whole files, where their quirks are
the point).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from ml_playground.config import PrepareConfig, SpeechesConfig
from ml_playground.data.speeches.selection import Selection
from ml_playground.data.speeches.source import (
    ReadReport,
    parse_date,
    read_speeches,
    speech_sources,
)
from ml_playground.data.speeches.speech import SPEECH_END, SPEECH_START, Speech, format_record
from ml_playground.data.table import RowCounts, read_rows
from ml_playground.errors import DataError
from tests.finetune_helpers import (
    SPEAKGER_DIR,
    SpeechRow,
    copy_member_slices,
    member_name,
    speeches,
    write_speeches_csv,
)


def read_all(
    paths: list[Path], selection: Selection | None = None
) -> tuple[list[Speech], ReadReport]:
    report = ReadReport()
    read = read_speeches(paths, report)
    return list((selection or Selection()).select(read, report)), report


# --- records -----------------------------------------------------------------------------


def test_record_has_a_header_of_known_fields_a_blank_line_and_the_text() -> None:
    speech = Speech(
        text="Meine Damen und Herren!",
        origin="x",
        speaker="Erika Muster",
        party="SPD",
        date=datetime.date(2023, 5, 4),
    )

    assert format_record(speech, structure_tokens=False) == (
        "Sprecher: Erika Muster\nPartei: SPD\nJahr: 2023\n\nMeine Damen und Herren!"
    )


def test_structure_tokens_wrap_the_record_and_a_bare_speech_has_no_header() -> None:
    speech = Speech(text="Ja.", origin="x")

    assert format_record(speech, structure_tokens=True) == f"{SPEECH_START}\nJa.\n{SPEECH_END}"


# --- SpeakGer tables ------------------------------------------------------------------------


def test_speakger_speeches_get_names_from_meta_and_parties_from_the_mapping(tmp_path: Path) -> None:
    table = write_speeches_csv(tmp_path / "Bundestag.csv", [SpeechRow("Danke.", mpid="19707")])
    copy_member_slices(tmp_path)

    [speech], report = read_all([table])

    assert speech.speaker == member_name("19707")
    assert speech.party == "DIE LINKE"  # "linke/pds/sed" in the mapping, displayed as spoken
    assert (speech.period, speech.date, speech.state) == (
        19,
        datetime.date(2019, 3, 14),
        "Bundestag",
    )
    assert report.kept == 1
    assert report.unknown_mpids == 0


def test_party_column_of_the_speech_wins_over_the_mapping(tmp_path: Path) -> None:
    table = write_speeches_csv(
        tmp_path / "Bundestag.csv", [SpeechRow("Danke.", mpid="19707", party="fraktionslos")]
    )
    copy_member_slices(tmp_path)

    [speech], _ = read_all([table])

    assert speech.party == "fraktionslos"


def test_mpid_missing_from_the_meta_table_is_counted_and_keeps_its_mapping_party(
    tmp_path: Path,
) -> None:
    # 15137 is in the real mapping (Bundestag and a Landtag) but not in all_mps_meta.csv.
    table = write_speeches_csv(tmp_path / "speeches.csv", [SpeechRow("Danke.", mpid="15137")])
    copy_member_slices(tmp_path, ["15137", "19707"])

    [speech], report = read_all([table])

    assert speech.speaker is None
    assert speech.party == "CDU"  # period 19: only the Bundestag seat, so unambiguous
    assert report.unknown_mpids == 1


def test_rows_quoted_as_a_whole_in_the_real_mapping_file_are_repaired_not_lost() -> None:
    counts = RowCounts()

    rows = list(
        read_rows(
            SPEAKGER_DIR / "all_mps_mapping.csv",
            {"mpid": ("MPID",), "party": ("Party",), "constituency": ("Constituency",)},
            required=("mpid",),
            counts=counts,
        )
    )

    assert counts.repaired == 1307
    assert counts.malformed_total == 0
    assert len(rows) == counts.read == 45247
    repaired = next(row for row in rows if row.origin.endswith("all_mps_mapping.csv:2600"))
    assert repaired.get("constituency") == "Alzenau in Unterfranken, Gemünden am Main, Lohr am Main"


def test_the_semicolon_separated_meta_table_is_read_by_its_header(tmp_path: Path) -> None:
    counts = RowCounts()

    rows = list(
        read_rows(
            SPEAKGER_DIR / "all_mps_meta.csv",
            {"mpid": ("mpid",), "name": ("NAME",)},
            required=("mpid", "name"),
            counts=counts,
        )
    )

    assert len(rows) == 15919
    assert rows[0].values == {"mpid": "1", "name": "Wilhelm Baessler"}


def test_malformed_rows_are_counted_with_their_line_and_the_rest_is_read(tmp_path: Path) -> None:
    table = write_speeches_csv(
        tmp_path / "speeches.csv",
        speeches(3),
        extra_lines=["19,4,False,False,too few fields", '19,5,False,False,"",1,spd,2019-03-14'],
    )

    kept, report = read_all([table])

    assert len(kept) == 3
    assert report.read == 5
    assert dict(report.malformed) == {"wrong number of fields": 1, "empty speech text": 1}
    assert report.examples[0] == (f"{table}:5: wrong number of fields (5 fields, the header has 8)")
    assert "2 malformed" in report.summary()


def test_chair_and_interjection_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        SpeechRow("Das Wort hat der Kollege.", chair="True"),
        SpeechRow("Hört! Hört!", interjection="1"),
        SpeechRow("Meine Damen und Herren!"),
    ]
    table = write_speeches_csv(tmp_path / "speeches.csv", rows)

    kept, report = read_all([table])
    everything, _ = read_all(
        [table], Selection(SpeechesConfig(skip_chair=False, skip_interjections=False))
    )

    assert [speech.text for speech in kept] == ["Meine Damen und Herren!"]
    assert dict(report.skipped) == {"chair": 1, "interjection": 1}
    assert len(everything) == 3


def test_period_party_and_date_filters_say_why_each_speech_was_left_out(tmp_path: Path) -> None:
    rows = [
        SpeechRow("Eins.", party="SPD", period="19", date="2019-01-10"),
        SpeechRow("Zwei.", party="cdu", period="19", date="2019-01-10"),
        SpeechRow("Drei.", party="SPD", period="18", date="2016-01-10"),
        SpeechRow("Vier.", party="SPD", period="19", date="2020-12-31"),
        SpeechRow("Fünf.", party="SPD", period="", date="2019-01-10"),
    ]
    table = write_speeches_csv(tmp_path / "speeches.csv", rows)
    # Dates quoted, as a TOML file may write them.
    speeches = SpeechesConfig.model_validate(
        {"periods": [19], "parties": ["spd"], "date_from": "2019-01-01", "date_to": "2019-12-31"}
    )

    kept, report = read_all([table], Selection(speeches))

    assert [speech.text for speech in kept] == ["Eins."]
    assert dict(report.skipped) == {
        "other party": 1,
        "other period": 1,
        "after date_to": 1,
        "period unknown": 1,
    }


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        ({"date_to": "31.12.2019"}, r"prepare.speeches.date_to = '31.12.2019' is not a date"),
        (
            {"date_from": "2020-01-01", "date_to": "2019-12-31"},
            r"date_from = 2020-01-01 is after prepare.speeches.date_to = 2019-12-31; swap",
        ),
    ],
)
def test_date_filters_are_checked_as_the_config_is_read(
    dates: dict[str, str], message: str
) -> None:
    # The loader turns this into one line naming the file (tests/integration/test_records.py).
    with pytest.raises(ValidationError, match=message):
        SpeechesConfig.model_validate(dates)


def test_columns_are_found_by_name_without_case_and_semicolons_work(tmp_path: Path) -> None:
    table = tmp_path / "speeches.csv"
    table.write_text(
        "SPEECH;mpId;DATUM;wahlperiode;Thema\nJa, bitte.;19272;07.11.2018;19;Rente\n",
        encoding="utf-8",
    )
    copy_member_slices(tmp_path)

    [speech], _ = read_all([table])

    assert speech.text == "Ja, bitte."
    assert speech.speaker == member_name("19272")
    assert speech.date == datetime.date(2018, 11, 7)
    assert speech.topic == "Rente"


def test_open_discourse_speeches_table_is_understood(tmp_path: Path) -> None:
    table = tmp_path / "speeches.csv"
    table.write_text(
        "id,session,electoralTerm,firstName,lastName,politicianId,speechContent,factionId,"
        "documentUrl,positionShort,positionLong,date\n"
        '1,1,1,Erich,Köhler,-1,"Meine Damen und Herren!({0}) Ich eröffne.",-1,u,'
        "Presidium of Parliament,Präsident,1949-09-07 00:00:00\n"
        '2,1,1,Paul,Löbe,11000,"Wir ({1}) beginnen.",-1,u,Member of Parliament,,1949-09-07\n',
        encoding="utf-8",
    )

    kept, report = read_all([table])

    assert [(speech.speaker, speech.text) for speech in kept] == [("Paul Löbe", "Wir  beginnen.")]
    assert kept[0].period == 1
    assert kept[0].date == datetime.date(1949, 9, 7)
    assert dict(report.skipped) == {"chair": 1}


def test_missing_text_column_names_the_columns_the_file_has(tmp_path: Path) -> None:
    table = tmp_path / "speeches.csv"
    table.write_text("Period,Date\n19,2019-01-01\n", encoding="utf-8")

    with pytest.raises(
        DataError,
        match=r"no text column \(looked for Speech, speechContent.*its columns are Period, Date",
    ):
        read_all([table])


def test_unreadable_dates_are_counted_and_leave_the_date_unknown(tmp_path: Path) -> None:
    table = write_speeches_csv(tmp_path / "speeches.csv", [SpeechRow("Ja.", date="nächste Woche")])

    [speech], report = read_all([table])

    assert speech.date is None
    assert dict(report.unreadable) == {"date": 1}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2019-03-14", (datetime.date(2019, 3, 14), 2019)),
        ("2019-03-14T09:00:00", (datetime.date(2019, 3, 14), 2019)),
        ("14.03.2019", (datetime.date(2019, 3, 14), 2019)),
        ("1999", (None, 1999)),
        ("", (None, None)),
        ("2019-02-30", None),
        ("gestern", None),
    ],
)
def test_dates_in_the_usual_spellings_are_read(
    value: str, expected: tuple[datetime.date | None, int | None] | None
) -> None:
    assert parse_date(value) == expected


def test_non_utf8_table_is_an_error_naming_the_file(tmp_path: Path) -> None:
    table = tmp_path / "speeches.csv"
    table.write_bytes("Speech\nGrüße\n".encode("latin-1"))

    with pytest.raises(DataError, match=rf"{table} is not valid UTF-8"):
        read_all([table])


# --- sources ------------------------------------------------------------------------------


def test_raw_dir_yields_txt_and_csv_below_it_but_never_member_tables(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "2019").mkdir(parents=True)
    (raw / "2019" / "rede.txt").write_text("Eine Rede.", encoding="utf-8")
    write_speeches_csv(raw / "Bundestag.csv", speeches(2))
    copy_member_slices(raw)

    sources = speech_sources(PrepareConfig(raw_dir=raw), frozenset({".txt", ".csv"}))
    only_csv = speech_sources(PrepareConfig(raw_dir=raw), frozenset({".csv"}))

    assert sources == [raw / "2019" / "rede.txt", raw / "Bundestag.csv"]
    assert only_csv == [raw / "Bundestag.csv"]


def test_each_txt_file_is_one_speech_and_an_empty_one_is_counted(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Erste Rede.\r\n\r\n\r\n\r\nZweiter Absatz.", encoding="utf-8")
    (tmp_path / "b.txt").write_text("  \n", encoding="utf-8")

    kept, report = read_all([tmp_path / "a.txt", tmp_path / "b.txt"])

    assert [speech.text for speech in kept] == ["Erste Rede.\n\nZweiter Absatz."]
    assert dict(report.malformed) == {"empty speech text": 1}


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (PrepareConfig(raw_text_path=Path("/nowhere/speeches.csv")), "does not exist"),
        (
            PrepareConfig(raw_dir=Path("/nowhere")),
            "no speeches to prepare: /nowhere does not exist",
        ),
    ],
)
def test_missing_sources_are_errors_saying_where_to_put_them(
    prepare: PrepareConfig, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        speech_sources(prepare, frozenset({".csv"}))


def test_raw_dir_without_speeches_is_an_error(tmp_path: Path) -> None:
    copy_member_slices(tmp_path)

    with pytest.raises(DataError, match=r"no \.csv files found under"):
        speech_sources(PrepareConfig(raw_dir=tmp_path), frozenset({".csv"}))
