"""Experiment: character-level GPT on German parliamentary text."""
