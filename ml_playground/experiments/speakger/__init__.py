"""Experiment: Gemma LoRA fine-tuning on SpeakGer speeches joined with member metadata."""
