"""The data layer: tokenizers, text sources, the prepared datasets of both kinds, batches.

`tokenizer` turns text into ids and back (and names what a Hugging Face tokenizer
offers), `sources` and `corpus` find raw text, `token_dataset` streams a corpus into
`train.bin`/`val.bin`/`meta.json`, `speeches/` reads a speech corpus, `records` turns it
into `train.jsonl`/`val.jsonl`/`tokenizer/`/`meta.json`, `packing` packs records into
token files, `dataset_folder` is what both prepared datasets share (meta.json last, the
up-to-date check, the outcome), `table` reads delimited tables and `batches` draws
training batches from token files. Nothing here imports a higher layer.
"""
