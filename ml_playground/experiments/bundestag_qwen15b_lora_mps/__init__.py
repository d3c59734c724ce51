"""Experiment: Qwen2.5-1.5B preset of bundestag_finetuning_mps (same source, own config)."""
