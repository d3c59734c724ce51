"""The speech corpus: parliamentary speeches read, joined with their speakers and selected.

`source` finds and reads speeches (.txt files, speeches CSV tables via ../table.py),
`members` joins SpeakGer's member tables, `selection` keeps what [prepare.speeches] asks
for, `speech` is one speech and the training text it becomes, and `dataset` makes them a
source of the one dataset writer (../writer.py): one record per speech, split per speech.
How a generated speech is measured lives in ml_playground/sample/speech_quality.py.
"""
