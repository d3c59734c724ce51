"""The speech corpus: parliamentary speeches read, joined with their speakers and selected.

`source` finds and reads speeches (.txt files, speeches CSV tables via ../table.py),
`members` joins SpeakGer's member tables, `selection` keeps what [prepare.speeches] asks
for, `speech` is one speech and the training text it becomes, and `quality` measures a
generated speech. The records dataset (../records.py) turns them into jsonl records.
"""
