"""Sample from a from-scratch GPT checkpoint, streaming tokens as they are generated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ml_playground import checkpoint
from ml_playground.config import ExperimentConfig
from ml_playground.data.tokenizer import Tokenizer, TokenizerSpec, tokenizer_from_spec
from ml_playground.device import resolve_precision
from ml_playground.errors import DataError
from ml_playground.model.gpt import GPT, GPTConfig
from ml_playground.sample.prompt import read_prompt, save_sample
from ml_playground.sample.stream import TextStream


def load_for_sampling(out_dir: Path, device: torch.device) -> tuple[GPT, Tokenizer, Path]:
    """The model and tokenizer of the best (else last, else legacy) checkpoint in out_dir."""
    path = checkpoint.gpt_for_sampling(out_dir)
    ckpt = checkpoint.load(path)
    tokenizer = tokenizer_from_spec(TokenizerSpec.from_json(dict(ckpt.tokenizer), path))
    args, state = _fit_vocab(GPTConfig.from_dict(ckpt.model_args), dict(ckpt.model), tokenizer)
    model = GPT(args)
    model.load_state_dict(state)
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
    fitted = dataclasses.replace(args, vocab_size=tokenizer.vocab_size)
    rows = fitted.padded_vocab_size
    for key in ("transformer.wte.weight", "lm_head.weight"):
        state[key] = state[key][:rows]
    return fitted, state


def sample_gpt(config: ExperimentConfig) -> list[str]:
    """Generate num_samples texts from the prompt; print them as they grow and save them."""
    runtime, settings = config.sample.runtime, config.sample.sample
    precision = resolve_precision(runtime.device, runtime.dtype)
    model, tokenizer, path = load_for_sampling(runtime.out_dir, precision.device)
    # Generating one token reads every weight once, so sampling is bound by memory bandwidth.
    # Casting the weights once halves what bfloat16/float16 read per token; autocast would
    # instead re-cast each float32 weight at every token and read more than float32 does.
    model.to(precision.dtype)
    print(
        f"sampling from {path}"
        + ("" if precision.dtype == torch.float32 else f" in {runtime.dtype}")
    )
    prompt_ids = _encode_prompt(tokenizer, read_prompt(settings.start))
    generator = torch.Generator(device=precision.device).manual_seed(runtime.seed)
    texts: list[str] = []
    for index in range(settings.num_samples):
        idx = torch.tensor([prompt_ids], dtype=torch.long, device=precision.device)
        ids = list(prompt_ids)
        stream = TextStream(enabled=settings.stream)
        if settings.stream:
            print(f"--- sample {index + 1}/{settings.num_samples} ---")
        for token in model.generate(
            idx,
            settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            generator=generator,
        ):
            token_id = int(token.item())
            if token_id == tokenizer.eot_id:
                break
            ids.append(token_id)
            if settings.stream:
                stream.update(tokenizer.decode(ids))
        text = tokenizer.decode(ids)
        stream.finish(text)
        saved = save_sample(runtime.out_dir, index, text)
        if not settings.stream:
            print(text)
        print(f"--- saved {saved} ---")
        texts.append(text)
    return texts


def _encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    if prompt:
        ids = tokenizer.encode(prompt)
        if ids:
            return ids
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    raise DataError(
        "sample.sample.start is empty and this tokenizer has no end-of-text token; "
        "give a prompt such as a newline"
    )
