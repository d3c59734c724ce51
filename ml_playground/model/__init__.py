"""The from-scratch model: a GPT-2-style decoder with a KV cache for generation (`gpt.py`)."""
