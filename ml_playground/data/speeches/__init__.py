"""The speech corpus as records to fine-tune on: `source` reads speeches (.txt files, CSV
tables via ../table.py), `members` joins SpeakGer's member tables, `selection` keeps what
[prepare.speeches] asks for, `speech` is one speech and its record, `dataset` writes them
(../writer.py). How a generated speech is measured: ml_playground/sample/speech_quality.py.
"""
