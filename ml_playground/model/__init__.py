"""The from-scratch model: `gpt.py` (both architectures, rotary positions, attention, the
GPT), `kv_cache.py` (the KV cache generation keeps), `config.py` (its shape, the
checkpoint's `model_args`), `loss.py` (the fused vocabulary cross-entropy) and `vocab.py`
(the padded output ids, masked for sampling and scoring by both backends)."""
