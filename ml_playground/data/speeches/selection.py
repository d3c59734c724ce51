"""Which speeches a dataset keeps, and why each other one is not: [prepare.speeches]' chair
and interjection rows, periods, parties, dates (config.py checks them) and max_records.

A filter that needs a value a speech does not have (a period filter on a speech without a
period) skips the speech, and the reason says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from ml_playground.config import SpeechesConfig
from ml_playground.data.speeches.members import display_party
from ml_playground.data.speeches.source import ReadReport
from ml_playground.data.speeches.speech import Speech


@dataclass(frozen=True)
class Selection:
    speeches: SpeechesConfig = field(default_factory=SpeechesConfig)

    @cached_property
    def parties(self) -> frozenset[str]:
        # As a header shows them and case-folded, so that "spd" keeps a speech of "SPD".
        return frozenset(display_party(party).casefold() for party in self.speeches.parties)

    def select(self, speeches: Iterable[Speech], report: ReadReport) -> Iterator[Speech]:
        """The speeches kept, at most max_records; every other one is counted in `report`
        under its reason."""
        limit = self.speeches.max_records
        for speech in speeches:
            if (reason := self.skip_reason(speech)) is not None:
                report.skipped[reason] += 1
                continue
            report.kept += 1
            yield speech
            if limit is not None and report.kept >= limit:
                return  # the rest is not read at all

    def skip_reason(self, speech: Speech) -> str | None:  # noqa: PLR0911 - one per reason
        """Why `speech` is left out, or None when it is kept."""
        config = self.speeches
        if config.skip_chair and speech.chair:
            return "chair"
        if config.skip_interjections and speech.interjection:
            return "interjection"
        if config.periods:
            if speech.period is None:
                return "period unknown"
            if speech.period not in config.periods:
                return "other period"
        if self.parties:
            if not speech.party:
                return "party unknown"
            if speech.party.casefold() not in self.parties:
                return "other party"
        if config.date_from is not None or config.date_to is not None:
            if speech.date is None:
                return "date unknown"
            if config.date_from is not None and speech.date < config.date_from:
                return "before date_from"
            if config.date_to is not None and speech.date > config.date_to:
                return "after date_to"
        return None
