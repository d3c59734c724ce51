"""The Hugging Face model with LoRA, as `model/` is the from-scratch GPT.

hub (load a pretrained model and tokenizer, online or offline) -> model (apply, load and
merge LoRA adapters; write their weights); loss (the next-token loss from the last hidden
states, in chunks), dropout (LoRA dropout with one mask per input and pass). The
backend's halves of the steps live beside them: `train/hf.py`, `sample/hf.py`,
`export/hf.py`.
"""
