"""The data layer: tokenizers, text sources, the one dataset writer and its sources, batches.

`tokenizer` turns text into ids and back (and names what a Hugging Face tokenizer
offers). `writer` is the one dataset writer: a source hands it a `DatasetPlan`, and it
skips an up-to-date folder or writes the layout of `dataset_meta` (the one meta.json
schema and reader) through `dataset_folder`'s crash-consistent staging. The sources:
`corpus` (a text corpus, found by `sources`, which also downloads and holds the bundled
corpus), `speeches/` (a speech corpus) and `chat_records` (JSONL records, or a Hugging Face
datasets split via `hf_datasets`, rendered by `rendering`: chat templates, target spans,
end-of-turn ids). Speeches and chat records are split per record by `record_split`.
`table` reads delimited tables and `batches` draws training batches from token files.
Nothing here imports a higher layer.
"""
