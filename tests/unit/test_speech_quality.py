"""The quality report written next to every fine-tuned sample."""

from __future__ import annotations

from ml_playground.sample.speech_quality import analyse

SPEECH = (
    "Sprecher: Erika Muster\nPartei: SPD\nJahr: 2021\n\n"
    "Meine Damen und Herren! Wir beraten heute den Haushalt. Ich danke Ihnen."
)


def test_a_clean_speech_has_its_header_and_no_anomalies() -> None:
    quality = analyse(SPEECH, SPEECH[20:], ended_at_eos=True)

    assert quality.header == {"Sprecher": "Erika Muster", "Partei": "SPD", "Jahr": "2021"}
    assert quality.header_fields_missing == ["Thema"]
    assert quality.anomalies == []
    assert quality.repeated_lines == 0


def test_an_unfinished_sentence_cut_off_at_max_new_tokens_is_flagged() -> None:
    text = SPEECH + " Und deshalb sage ich"

    quality = analyse(text, "Und deshalb sage ich", ended_at_eos=False)

    assert "unfinished last sentence" in quality.anomalies
    assert "no end-of-sequence token: cut off at max_new_tokens" in quality.anomalies


def test_repeated_lines_and_looping_phrases_are_counted() -> None:
    loop = "Wir müssen jetzt handeln.\n" * 5

    quality = analyse(loop, loop, ended_at_eos=True)

    assert quality.repeated_lines == 4
    assert quality.line_repetition == 0.8
    assert quality.repeated_ngrams[0] == ("Wir müssen jetzt handeln.", 5)
    assert quality.ngram_repetition > 0.5
    assert "4 repeated lines" in quality.anomalies
    assert any(anomaly.startswith("looping phrase") for anomaly in quality.anomalies)


def test_leaked_structure_tokens_a_second_header_and_broken_characters_are_flagged() -> None:
    text = SPEECH + "\n<SPEECH_END>\nSprecher: Paul Löbe\n\nJa\ufffd."

    quality = analyse(text, text[len(SPEECH) :], ended_at_eos=True)

    assert "structure token inside the speech" in quality.anomalies
    assert "a second speech header after the speech began" in quality.anomalies
    assert "broken character (invalid UTF-8 from split tokens)" in quality.anomalies


def test_an_empty_continuation_is_flagged_and_the_report_is_json_ready() -> None:
    quality = analyse("Sprecher:", "", ended_at_eos=True)

    report = quality.to_json()

    assert report["anomalies"] == ["empty continuation: the model stopped at once"]
    assert report["ended_at_eos"] is True
