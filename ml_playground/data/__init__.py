"""The data layer: sources in, token files out, training batches drawn from them.

`writer` is the one dataset writer, `dataset_meta` the folder layout and meta.json it
writes, `dataset_folder` its crash-consistent staging, `record_split` the per-record split.
Its sources: `corpus` (text files that `sources` finds or downloads), `speeches/`, and
`chat_records` (JSONL records or a datasets split via `hf_datasets`, rendered by
`rendering`). `tokenizer` turns text into ids and back, `table` reads delimited tables,
`batches` draws training batches from token files. Nothing here imports a higher layer.
"""
