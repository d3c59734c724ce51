"""The from-scratch model: `gpt.py` (both architectures, rotary positions, attention, the
GPT), `kv_cache.py` (the KV cache generation keeps), `config.py` (its shape, the
checkpoint's `model_args`) and `loss.py` (the fused vocabulary cross-entropy)."""
