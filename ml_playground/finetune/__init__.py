"""Fine-tuning pretrained Hugging Face causal language models with LoRA.

The HF + LoRA backend only; its dataset (speech records, packing) lives in data/.
hub/model (load base, apply LoRA, merge) -> trainer (the loop, shaped like
train/loop.py) -> adapters (best/last/final) -> sampler.
"""
