"""Which speeches a dataset keeps: [prepare.speeches]' chair and interjection rows, periods,
parties and dates (config.py checks the dates).

A filter that needs a value a speech does not have (a period filter on a speech without a
period) skips the speech, and the reason says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from ml_playground.config import SpeechesConfig
from ml_playground.data.speeches.members import display_party
from ml_playground.data.speeches.speech import Speech


@dataclass(frozen=True)
class Selection:
    speeches: SpeechesConfig = field(default_factory=SpeechesConfig)

    @cached_property
    def parties(self) -> frozenset[str]:
        # As a header shows them and case-folded, so that "spd" keeps a speech of "SPD".
        return frozenset(display_party(party).casefold() for party in self.speeches.parties)

    def skip_reason(self, speech: Speech) -> str | None:
        """Why `speech` is left out, or None when it is kept."""
        if self.speeches.skip_chair and speech.chair:
            return "chair"
        if self.speeches.skip_interjections and speech.interjection:
            return "interjection"
        return (
            self._period_reason(speech) or self._party_reason(speech) or self._date_reason(speech)
        )

    def _period_reason(self, speech: Speech) -> str | None:
        if not self.speeches.periods:
            return None
        if speech.period is None:
            return "period unknown"
        return None if speech.period in self.speeches.periods else "other period"

    def _party_reason(self, speech: Speech) -> str | None:
        if not self.parties:
            return None
        if not speech.party:
            return "party unknown"
        return None if speech.party.casefold() in self.parties else "other party"

    def _date_reason(self, speech: Speech) -> str | None:
        date_from, date_to = self.speeches.date_from, self.speeches.date_to
        if date_from is None and date_to is None:
            return None
        if speech.date is None:
            return "date unknown"
        if date_from is not None and speech.date < date_from:
            return "before date_from"
        if date_to is not None and speech.date > date_to:
            return "after date_to"
        return None
