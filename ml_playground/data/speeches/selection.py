"""Which speeches a dataset keeps: chair and interjection rows, periods, parties, dates.

Built from [prepare] (skip_chair, skip_interjections, periods, parties, date_from,
date_to). A filter that needs a value a speech does not have (a period filter on a speech
without a period) skips the speech, and the reason says so.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ml_playground.config import PrepareConfig
from ml_playground.data.speeches.members import display_party
from ml_playground.data.speeches.speech import Speech
from ml_playground.errors import ConfigError


@dataclass(frozen=True)
class Selection:
    skip_chair: bool = True
    skip_interjections: bool = True
    periods: frozenset[int] = frozenset()
    parties: frozenset[str] = frozenset()  # case-folded display names
    date_from: datetime.date | None = None
    date_to: datetime.date | None = None

    @classmethod
    def from_config(cls, prepare: PrepareConfig) -> Selection:
        date_from = _config_date(prepare.date_from, "prepare.date_from")
        date_to = _config_date(prepare.date_to, "prepare.date_to")
        if date_from is not None and date_to is not None and date_from > date_to:
            raise ConfigError(
                f"prepare.date_from = {date_from} is after prepare.date_to = {date_to}; "
                "swap or fix them"
            )
        return cls(
            skip_chair=prepare.skip_chair,
            skip_interjections=prepare.skip_interjections,
            periods=frozenset(prepare.periods),
            parties=frozenset(display_party(party).casefold() for party in prepare.parties),
            date_from=date_from,
            date_to=date_to,
        )

    def skip_reason(self, speech: Speech) -> str | None:
        """Why `speech` is left out, or None when it is kept."""
        if self.skip_chair and speech.chair:
            return "chair"
        if self.skip_interjections and speech.interjection:
            return "interjection"
        return (
            self._period_reason(speech) or self._party_reason(speech) or self._date_reason(speech)
        )

    def _period_reason(self, speech: Speech) -> str | None:
        if not self.periods:
            return None
        if speech.period is None:
            return "period unknown"
        return None if speech.period in self.periods else "other period"

    def _party_reason(self, speech: Speech) -> str | None:
        if not self.parties:
            return None
        if not speech.party:
            return "party unknown"
        return None if speech.party.casefold() in self.parties else "other party"

    def _date_reason(self, speech: Speech) -> str | None:
        if self.date_from is None and self.date_to is None:
            return None
        if speech.date is None:
            return "date unknown"
        if self.date_from is not None and speech.date < self.date_from:
            return "before date_from"
        if self.date_to is not None and speech.date > self.date_to:
            return "after date_to"
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "skip_chair": self.skip_chair,
            "skip_interjections": self.skip_interjections,
            "periods": sorted(self.periods),
            "parties": sorted(self.parties),
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
        }


def _config_date(value: str | None, key: str) -> datetime.date | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{key} = {value!r} is not a date; write it as YYYY-MM-DD") from None
