"""Experiment: LoRA fine-tuning of an instruction-tuned model on chat conversations (JSONL)."""
