"""Speech records: one speech with what is known about it, and the text a model learns.

A record's text is a short German header holding only the fields that are known, a blank
line, and the speech:

    Sprecher: Erika Muster
    Partei: SPD
    Thema: Haushaltsgesetz 2024
    Jahr: 2023

    Frau Präsidentin! Meine Damen und Herren! ...

With structure tokens the record is wrapped in <SPEECH_START> ... <SPEECH_END>; prepare
registers both as special tokens, so each is a single id the model learns to open and
close a speech with. A speech with no known field has no header, only its text. The
framing goes into meta.json (dataset.py: speech_record_format) for sampling and export.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

SPEECH_START = "<SPEECH_START>"
SPEECH_END = "<SPEECH_END>"
STRUCTURE_TOKENS = (SPEECH_START, SPEECH_END)
HEADER_FIELDS = ("Sprecher", "Partei", "Thema", "Jahr")
RECORD_OPENING = f"{SPEECH_START}\n"


@dataclass(frozen=True)
class Speech:
    """One speech as read from a source; `origin` ("file:line") names it in messages."""

    text: str
    origin: str
    speaker: str | None = None
    party: str | None = None
    topic: str | None = None
    date: datetime.date | None = None
    year: int | None = None
    period: int | None = None
    state: str | None = None
    chair: bool = False
    interjection: bool = False


def format_record(speech: Speech, *, structure_tokens: bool) -> str:
    """The record text of `speech`, as the module docstring shows it."""
    year = speech.date.year if speech.date is not None else speech.year
    values = (speech.speaker, speech.party, speech.topic, str(year) if year else None)
    fields = zip(HEADER_FIELDS, values, strict=True)
    header = "\n".join(f"{name}: {value}" for name, value in fields if value)
    body = f"{header}\n\n{speech.text}" if header else speech.text
    return f"{RECORD_OPENING}{body}\n{SPEECH_END}" if structure_tokens else body
