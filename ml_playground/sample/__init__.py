"""Sampling: one generation front end for every model backend.

`run.sample_texts` is the `sample` step: the prompt (`prompt`), the batched decode loop
(`generate`) with its draw (`filters`), the text stream (`stream`) and the saved files.
`chat.chat` is the `chat` step: the same loaded model, one streamed reply per line read.
`evaluate.evaluate_run` is the `eval` step on the same loaded model. A backend supplies a
`backend.LoadedModel`: `gpt.load_gpt` for the from-scratch GPT, `hf.load_hf` for a Hugging
Face model with LoRA adapters (`ml_playground.backends` picks one). `speech_quality`
measures a generated speech (header, repetitions, anomalies); `hf` saves that analysis
next to each sample when the records had structure tokens.
"""
