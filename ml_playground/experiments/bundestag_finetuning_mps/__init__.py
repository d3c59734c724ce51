"""Experiment: LoRA fine-tuning of a Hugging Face causal LM on German parliamentary speech."""
