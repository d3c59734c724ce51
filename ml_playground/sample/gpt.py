"""The from-scratch GPT as a sampling backend: its checkpoint, tokenizer and decode step.

The step feeds each new token through the model's own `KVCache`. Past block_size the
window moves on: a `llama` model (rotary, relative positions) slides its cache by the
tokens that no longer fit; a `gpt2` model (learned absolute positions) refills it with the
newest half block (see `gpt_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ml_playground import checkpoint, run_folder
from ml_playground.config import ExperimentConfig
from ml_playground.data.tokenizer import Tokenizer, tokenizer_from_spec
from ml_playground.device import resolve_sampling_precision
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.model.kv_cache import CacheSlot, KVCache
from ml_playground.model.vocab import mask_padded
from ml_playground.sample.backend import Forward, LoadedModel, Scoring
from ml_playground.sample.generate import Step

Decode = Callable[[Tensor, CacheSlot, Tensor], Tensor]
"""`GPT.decode`, or a compiled version of it: logits (B, vocab_size) of one new token."""


def load_for_sampling(out_dir: Path, device: torch.device) -> tuple[GPT, Tokenizer, Path]:
    """The model and tokenizer of the best (else last, else legacy) checkpoint in out_dir."""
    path = run_folder.gpt_for_sampling(out_dir)
    ckpt = checkpoint.load_trained(out_dir, path)
    tokenizer = tokenizer_from_spec(ckpt.tokenizer)
    args, state = _fit_vocab(ckpt.model_args, dict(ckpt.model), tokenizer)
    model = GPT(args)
    checkpoint.load_weights(model, state, path)
    model.to(device).eval()
    return model, tokenizer, path


def _fit_vocab(
    args: GPTConfig, state: dict[str, torch.Tensor], tokenizer: Tokenizer
) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Shrink a model trained with train.model.vocab_size above the tokenizer's to its size.

    Ids past the tokenizer's vocabulary never occur in the data, yet their logits are finite,
    so sampling could pick one that the tokenizer cannot decode. With the tokenizer's
    vocab_size the model masks them, and their embedding rows (the tied output rows too)
    past the new padded size can go: the remaining logits are exactly the same.
    """
    if args.vocab_size <= tokenizer.vocab_size:
        return args, state
    fitted = args.replace(vocab_size=tokenizer.vocab_size)
    rows = fitted.padded_vocab_size
    for key in ("transformer.wte.weight", "lm_head.weight"):
        if key in state:  # a missing one is reported when the weights are loaded
            state[key] = state[key][:rows]
    return fitted, state


def load_gpt(config: ExperimentConfig) -> LoadedModel:
    """The checkpoint sampling uses, on sample.runtime's device, in its precision."""
    runtime = config.sample.runtime
    precision = resolve_sampling_precision(runtime.device, runtime.dtype)
    model, tokenizer, path = load_for_sampling(runtime.out_dir, precision.device)
    # Generating one token reads every weight once, so sampling is bound by memory bandwidth.
    # Casting the weights once halves what bfloat16/float16 read per token; autocast would
    # instead re-cast each float32 weight at every token and read more than float32 does.
    model.to(precision.dtype)
    head = model.decoding_head()  # once, not per sample or chat turn
    in_dtype = "" if precision.dtype == torch.float32 else f" in {precision.dtype_name}"
    eot = tokenizer.eot_id
    return LoadedModel(
        description=f"sampling from {path}{in_dtype}",
        device=precision.device,
        new_step=lambda: gpt_step(model, head=head),
        encode=tokenizer.encode,
        decode=tokenizer.decode,
        first_id=eot,
        stop_ids=frozenset(() if eot is None else (eot,)),
        context_size=model.config.block_size,
        scoring=Scoring(
            forward=gpt_forward(model),
            context=model.config.block_size,
            vocab_size=tokenizer.vocab_size,
            weights=path,
            precision=precision,
        ),
    )


def gpt_forward(model: GPT) -> Forward:
    """Logits of every position of a batch of at most block_size ids, padded ids at -inf."""

    def forward(ids: Tensor) -> Tensor:
        logits: Tensor = model(ids.to(model.transformer.wte.weight.device))
        return mask_padded(logits, model.config.vocab_size)

    return forward


def gpt_step(
    model: GPT,
    *,
    head: Tensor | None = None,
    decode: Decode | None = None,
) -> Step:
    """Next-token logits (B, vocab_size) of `model` for a batch, with its KV cache.

    Prompts and refills go through `forward_cached`; each later single token through
    `decode` (default `model.decode`; a compiled one from `compiled_decode`), which writes
    one `CacheSlot` and multiplies by `head` (`model.decoding_head()`, taken here when not
    given). Only the last block_size ids of the context are used. Dropout follows the
    module's mode, so call `eval()` first for reproducible samples.
    """
    block_size, vocab_size = model.config.block_size, model.config.vocab_size
    decode_one = decode or model.decode
    output = model.decoding_head() if head is None else head
    cache: KVCache | None = None
    context: Tensor | None = None

    def step(ids: Tensor) -> Tensor:
        nonlocal cache, context
        ids = ids.to(output.device)
        context = ids if context is None else torch.cat((context, ids), dim=1)
        context = context[:, -block_size:]
        if cache is None:
            cache = model.new_kv_cache(ids.size(0))
            new = context
        elif cache.length + ids.size(1) > cache.capacity and model.config.arch == "llama":
            # Rotary keys encode where they were, so the oldest positions can simply go and
            # the model attends to the last block_size tokens. Their keys and values were
            # computed while older tokens were still in view, so beyond one layer this is
            # close to, not equal to, recomputing the window without a cache.
            cache.drop_oldest(cache.length + ids.size(1) - cache.capacity)
            new = ids
        elif cache.length + ids.size(1) > cache.capacity:
            # Learned absolute positions are baked into every cached key and value, so a
            # full cache cannot slide by one token: each kept token would sit one position
            # earlier than when it was cached. Re-prefilling the last block_size tokens every
            # step is exact but costs what the no-cache path costs. Instead, like llama.cpp's
            # context shift, drop the older half and re-prefill the newer half: one prefill
            # every block_size/2 tokens, and each token still sees at least half a block.
            # Past block_size the two paths thus see different windows and may pick
            # different tokens.
            cache.reset()
            new = context[:, -((cache.capacity + 1) // 2) :]
        else:
            new = ids
        if new.size(1) == 1 and cache.length > 0:
            logits = decode_one(new, cache.slot(), output)
            cache.advance(1)
            return logits
        return model.forward_cached(new, cache, last_only=True)[:, -1, :vocab_size]

    return step
