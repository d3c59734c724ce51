"""Experiment: GPT-2 BPE GPT on Tiny Shakespeare."""
