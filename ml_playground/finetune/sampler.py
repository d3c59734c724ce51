"""Sample from a fine-tuned model, streaming tokens as they come, with a quality report.

Same parameters and meaning as the from-scratch sampler (temperature 0 = greedy, top_k 0
= off, top_p 1.0 = off, seed, FILE: prompts); the next token is picked by the same
`sample_next`. Generation stops at the end-of-sequence token (or <SPEECH_END> when the
dataset used structure tokens). With structure tokens, a prompt that does not open with
<SPEECH_START> gets it, so it begins the way every training record began. Each sample is
saved as out_dir/samples/*.txt with a *.json quality analysis beside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ml_playground import atomic
from ml_playground.config import ExperimentConfig, SampleSettings
from ml_playground.data.speeches.quality import analyse
from ml_playground.data.speeches.speech import SPEECH_END, SPEECH_START
from ml_playground.device import Precision, resolve_precision
from ml_playground.errors import DataError
from ml_playground.finetune.hub import Tokenizer
from ml_playground.finetune.inference import Trained, load_trained
from ml_playground.finetune.model import weights_dtype
from ml_playground.model.gpt import sample_next
from ml_playground.sample.prompt import read_prompt, save_sample
from ml_playground.sample.stream import TextStream


def sample_lora(config: ExperimentConfig) -> list[str]:
    """Generate num_samples texts from the prompt; print them as they grow and save them."""
    hf = config.train.hf_model
    assert hf is not None  # the pipeline only sends configs with [train.hf_model] here
    runtime, settings = config.sample.runtime, config.sample.sample
    precision = resolve_precision(runtime.device, runtime.dtype)
    trained = load_trained(
        runtime.out_dir,
        hf,
        dtype=weights_dtype(hf, runtime),
        require_adapters=settings.require_adapters,
    )
    trained.model.to(precision.device)
    if trained.weights is None:
        print(f"no adapters in {runtime.out_dir}: sampling the base model {hf.model_name}")
    else:
        print(f"sampling from {hf.model_name} + {trained.weights}")
    structure = bool(trained.meta and trained.meta.structure_tokens)
    prompt = read_prompt(settings.start)
    opening = SPEECH_START + "\n" if structure and not prompt.startswith(SPEECH_START) else ""
    prompt_ids = _encode_prompt(trained.tokenizer, opening + prompt)
    # The opening is for the model; the saved text starts with the user's prompt.
    hidden = trained.tokenizer.decode(
        trained.tokenizer.encode(opening, add_special_tokens=False), skip_special_tokens=True
    )
    stop_ids = _stop_ids(trained, structure=structure)
    generator = torch.Generator(device=precision.device).manual_seed(runtime.seed)
    texts: list[str] = []
    for index in range(settings.num_samples):
        if settings.stream:
            print(f"--- sample {index + 1}/{settings.num_samples} ---")
        stream = _TextStream(trained.tokenizer, prompt_ids, hidden, enabled=settings.stream)
        ended_at_eos = False
        for token in generate(
            trained.model,
            prompt_ids,
            settings,
            precision=precision,
            vocab_size=len(trained.tokenizer),
            generator=generator,
        ):
            if token in stop_ids:
                ended_at_eos = True
                break
            stream.append(token)
        text = stream.finish()
        saved = save_sample(runtime.out_dir, index, text)
        # Special tokens stay in: a structure token in mid-speech is worth reporting.
        continuation = trained.tokenizer.decode(stream.new_ids, skip_special_tokens=False)
        quality = analyse(text, continuation, ended_at_eos=ended_at_eos)
        atomic.write_json(saved.with_suffix(".json"), quality.to_json())
        if not settings.stream:
            print(text)
        print(f"--- saved {saved} ({len(quality.anomalies)} anomalies in the .json) ---")
        texts.append(text)
    return texts


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    settings: SampleSettings,
    *,
    precision: Precision,
    vocab_size: int,
    generator: torch.Generator,
) -> Iterator[int]:
    """Continue `prompt_ids` token by token, reusing the model's key/value cache."""
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=precision.device)
    past: object = None
    for _ in range(settings.max_new_tokens):
        with precision.autocast():
            output = model(input_ids=input_ids, past_key_values=past, use_cache=True)
        past = output.past_key_values
        logits: torch.Tensor = output.logits[:, -1, :]
        # Embedding rows past the tokenizer (padding, e.g. Qwen's) are never valid output.
        padded = torch.arange(logits.size(-1), device=logits.device) >= vocab_size
        logits = logits.masked_fill(padded, float("-inf"))
        token = sample_next(logits, settings.temperature, settings.top_k, settings.top_p, generator)
        yield int(token.item())
        input_ids = token[:, None]


class _TextStream:
    """Decodes the growing id list and prints what it adds (never half a character)."""

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int], hidden: str, *, enabled: bool
    ) -> None:
        self._tokenizer = tokenizer
        self._prompt_ids = list(prompt_ids)
        self._hidden = hidden
        self.new_ids: list[int] = []
        self._enabled = enabled
        self._stream = TextStream(enabled=enabled)

    def append(self, token: int) -> None:
        self.new_ids.append(token)
        if self._enabled:
            self._stream.update(self._text())

    def finish(self) -> str:
        text = self._text()
        self._stream.finish(text)
        return text

    def _text(self) -> str:
        text = self._tokenizer.decode(self._prompt_ids + self.new_ids, skip_special_tokens=True)
        return text.removeprefix(self._hidden)


def _encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt, add_special_tokens=True) if prompt else []
    if ids:
        return ids
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise DataError(
            "sample.sample.start is empty and the tokenizer has neither a begin- nor an "
            "end-of-sequence token; give a prompt"
        )
    return [start]


def _stop_ids(trained: Trained, *, structure: bool) -> frozenset[int]:
    """EOS of the tokenizer and of the model's generation config, and <SPEECH_END>."""
    ids: set[int] = set()
    if trained.tokenizer.eos_token_id is not None:
        ids.add(trained.tokenizer.eos_token_id)
    generation_config: object = getattr(trained.model, "generation_config", None)
    configured: object = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(token for token in configured if isinstance(token, int))  # pyright: ignore[reportUnknownVariableType] - list from JSON
    if structure:
        ids.update(trained.tokenizer.convert_tokens_to_ids([SPEECH_END]))
    return frozenset(ids)
