"""Training machinery shared by the from-scratch GPT and the LoRA fine-tuner.

loop.py (`Run`, `assemble_run`, `train`), forward.py (DDP and torch.compile around the
model), optim.py, muon.py, schedule.py, interrupt.py, reporting.py (log lines, TensorBoard),
report_card.py; the backends gpt.py and hf.py.
"""
