"""A quick look at a generated speech: its header, its repetitions, what looks wrong.

Written next to every sample as JSON, so a run's samples can be compared by numbers and
not only read: which header fields (Sprecher, Partei, Thema, Jahr) the text carries, how
many lines repeat an earlier one, which word n-grams recur, and anomalies such as an
unfinished last sentence, a sample cut off by max_new_tokens, a structure token that
leaked into the text or a broken character.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ml_playground.data.speeches.speech import HEADER_FIELDS, STRUCTURE_TOKENS

NGRAM = 4
TOP_NGRAMS = 5
LOOPING_NGRAM_COUNT = 4  # a word 4-gram this frequent reads as a loop
LINE_REPETITION_LIMIT = 0.3
SENTENCE_END = re.compile(r"[.!?…:;\"»“”')\]]\s*$")
HEADER_LINE = re.compile(rf"^({'|'.join(HEADER_FIELDS)}):\s*(.*)$")
REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class SampleQuality:
    characters: int
    words: int
    lines: int
    header: dict[str, str]
    header_fields_missing: list[str]
    repeated_lines: int
    line_repetition: float
    repeated_ngrams: list[tuple[str, int]]
    ngram_repetition: float
    ended_at_eos: bool
    anomalies: list[str]

    def to_json(self) -> dict[str, object]:
        return {
            "characters": self.characters,
            "words": self.words,
            "lines": self.lines,
            "header": dict(self.header),
            "header_fields_missing": list(self.header_fields_missing),
            "repeated_lines": self.repeated_lines,
            "line_repetition": round(self.line_repetition, 4),
            "repeated_ngrams": [
                {"ngram": gram, "count": count} for gram, count in self.repeated_ngrams
            ],
            "ngram_repetition": round(self.ngram_repetition, 4),
            "ended_at_eos": self.ended_at_eos,
            "anomalies": list(self.anomalies),
        }


def analyse(text: str, continuation: str, *, ended_at_eos: bool) -> SampleQuality:
    """Measure `text` (prompt + continuation, special tokens removed).

    `continuation` is what the model added, special tokens included.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    header = _header(lines)
    words = text.split()
    repeated_lines = len(lines) - len(set(lines))
    grams = Counter(" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1))
    total_grams = sum(grams.values())
    repeats = sum(count - 1 for count in grams.values() if count > 1)
    quality = SampleQuality(
        characters=len(text),
        words=len(words),
        lines=len(lines),
        header=header,
        header_fields_missing=[field for field in HEADER_FIELDS if field not in header],
        repeated_lines=repeated_lines,
        line_repetition=repeated_lines / len(lines) if lines else 0.0,
        repeated_ngrams=[
            (gram, count) for gram, count in grams.most_common(TOP_NGRAMS) if count > 1
        ],
        ngram_repetition=repeats / total_grams if total_grams else 0.0,
        ended_at_eos=ended_at_eos,
        anomalies=[],
    )
    quality.anomalies.extend(_anomalies(quality, text, continuation))
    return quality


def _header(lines: list[str]) -> dict[str, str]:
    """The `Field: value` lines the text opens with."""
    header: dict[str, str] = {}
    for line in lines:
        match = HEADER_LINE.match(line)
        if match is None:
            break
        header[match.group(1)] = match.group(2)
    return header


def _anomalies(quality: SampleQuality, text: str, continuation: str) -> list[str]:
    found: list[str] = []
    body = continuation.strip()
    if not body:
        found.append("empty continuation: the model stopped at once")
    elif not SENTENCE_END.search(body):
        found.append("unfinished last sentence")
    if not quality.ended_at_eos:
        found.append("no end-of-sequence token: cut off at max_new_tokens")
    if quality.line_repetition > LINE_REPETITION_LIMIT:
        found.append(f"{quality.repeated_lines} repeated lines")
    looping = [gram for gram, count in quality.repeated_ngrams if count >= LOOPING_NGRAM_COUNT]
    if looping:
        found.append(f"looping phrase: {looping[0]!r}")
    if any(token in continuation for token in STRUCTURE_TOKENS):
        found.append("structure token inside the speech")
    if REPLACEMENT_CHAR in text:
        found.append("broken character (invalid UTF-8 from split tokens)")
    if _header_after_body(text):
        found.append("a second speech header after the speech began")
    return found


def _header_after_body(text: str) -> bool:
    in_body = False
    for line in (line.strip() for line in text.splitlines()):
        is_header = HEADER_LINE.match(line) is not None
        if in_body and is_header:
            return True
        in_body = in_body or (bool(line) and not is_header)
    return False
