"""The data layer: tokenizers, text sources, the prepared datasets of every kind, batches.

`tokenizer` turns text into ids and back (and names what a Hugging Face tokenizer
offers), `sources` and `corpus` find raw text, `token_dataset` streams a corpus into
`train.bin`/`val.bin`/`meta.json` (each split encoded by `split_encoder`), `speeches/`
reads a speech corpus, `records` tokenizes it into `train.bin`/`val.bin`/`tokenizer/`/
`meta.json`, `chat_records` does the same (with `train.mask.bin`/`val.mask.bin`) for
JSONL records (or a Hugging Face datasets split, `hf_datasets`) rendered by `rendering`
(chat templates, target spans, end-of-turn ids), `record_split` is the per-record split
both records datasets write into token files, `dataset_meta` is the one meta.json schema
and reader of every prepared dataset, `dataset_folder` is what every prepared dataset
shares (meta.json last, input fingerprints, the up-to-date check, the outcome), `table`
reads delimited tables and `batches` draws training batches from token files. Nothing
here imports a higher layer.
"""
