"""Which speeches a dataset keeps: chair and interjection rows, periods, parties, dates.

Built from [prepare.speeches] (skip_chair, skip_interjections, periods, parties,
date_from, date_to). A filter that needs a value a speech does not have (a period filter on a speech
without a period) skips the speech, and the reason says so.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ml_playground.artifacts import Artifact
from ml_playground.config import SpeechesConfig
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
    def from_config(cls, speeches: SpeechesConfig) -> Selection:
        date_from = _config_date(speeches.date_from, "prepare.speeches.date_from")
        date_to = _config_date(speeches.date_to, "prepare.speeches.date_to")
        if date_from is not None and date_to is not None and date_from > date_to:
            raise ConfigError(
                f"prepare.speeches.date_from = {date_from} is after "
                f"prepare.speeches.date_to = {date_to}; swap or fix them"
            )
        return cls(
            skip_chair=speeches.skip_chair,
            skip_interjections=speeches.skip_interjections,
            periods=frozenset(speeches.periods),
            parties=frozenset(display_party(party).casefold() for party in speeches.parties),
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

    def settings(self) -> SelectionSettings:
        return SelectionSettings(
            skip_chair=self.skip_chair,
            skip_interjections=self.skip_interjections,
            periods=tuple(sorted(self.periods)),
            parties=tuple(sorted(self.parties)),
            date_from=self.date_from.isoformat() if self.date_from else None,
            date_to=self.date_to.isoformat() if self.date_to else None,
        )


class SelectionSettings(Artifact):
    """A selection as a dataset's fingerprint records it."""

    skip_chair: bool
    skip_interjections: bool
    periods: tuple[int, ...]
    parties: tuple[str, ...]
    date_from: str | None
    date_to: str | None


def _config_date(value: str | None, key: str) -> datetime.date | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{key} = {value!r} is not a date; write it as YYYY-MM-DD") from None
