"""Training machinery shared by the from-scratch GPT and the LoRA fine-tuner."""
