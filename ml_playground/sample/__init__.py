"""Sampling: load a trained model, generate from a prompt, stream and save the text."""
