"""The from-scratch data layer: tokenizers, text sources, streaming prepare, memmap batches.

`tokenizer` turns text into ids and back, `sources` finds and downloads raw text,
`token_dataset` streams a corpus into `train.bin`/`val.bin`/`meta.json`, and `batches`
draws training batches from those files.
"""
