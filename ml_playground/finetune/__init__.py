"""The Hugging Face + LoRA model backend.

hub (load a pretrained model and tokenizer, online or offline) -> model (apply, load and
merge LoRA adapters; write their weights) -> trainer (the backend's part of the one
training loop in train/loop.py) -> inference (the trained model for sampling and merging).
"""
