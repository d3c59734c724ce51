"""Fine-tuning pretrained Hugging Face causal language models with LoRA.

records -> speeches (CSV/txt readers, SpeakGer metadata, filters) -> dataset (jsonl,
tokenizer/, meta.json) -> hub/model (load base, apply LoRA, merge) -> packing (token
bins) -> trainer (the loop, shaped like train/loop.py) -> adapters (best/last/final) ->
sampler (+ quality analysis of what it wrote).
"""
