"""Experiment: tiktoken BPE GPT on German parliamentary text."""
