"""`sample`: generate num_samples texts from a loaded model, print them and save them.

The samples are decoded as one batch (see sample/generate.py). With `stream` on, the
first sample appears token by token as it is generated; the others are printed whole
once the batch is done, in order. Each sample is saved as out_dir/samples/*.txt, with
the backend's analysis (if it has one) as a *.json beside it.

stdout carries only the samples' text, one blank line between two samples, so
`ml-playground sample X > out.txt` holds just them; the status (which checkpoint,
`--- sample i/n ---` before each, `--- saved PATH ---` after, and last one line saying how
fast the batch came, see generate.Speed) goes to stderr. A reader
that stops early (`| head`) only cuts the display short: every sample is still saved.
"""

from __future__ import annotations

import torch

from ml_playground import atomic, console
from ml_playground.config import ExperimentConfig
from ml_playground.sample.backend import LoadedModel
from ml_playground.sample.generate import Speed, generate
from ml_playground.sample.prompt import encode_prompt, read_prompt, save_sample
from ml_playground.sample.stream import TextStream

LIVE_ROW = 0


def sample_texts(config: ExperimentConfig, model: LoadedModel) -> list[str]:
    """The num_samples texts, each beginning with the prompt; printed and saved."""
    runtime, settings = config.sample.runtime, config.sample.sample
    console.status(model.description)
    prompt = encode_prompt(model, read_prompt(settings.start))
    generator = torch.Generator(device=model.device).manual_seed(runtime.seed)
    live: TextStream | None = None
    if settings.stream:
        live = TextStream(model.decode, prompt.ids, hidden=prompt.hidden)
        console.status(_header(0, settings.num_samples))
        console.write(live.prompt_text)

    def show(row: int, token: int) -> None:
        if live is not None and row == LIVE_ROW:
            console.write(live.push(token))

    speeds: list[Speed] = []
    rows = generate(
        model.new_step(),
        prompt.ids,
        settings,
        stop_ids=model.stop_ids,
        generator=generator,
        on_token=show,
        on_speed=speeds.append,
    )
    texts: list[str] = []
    for index, row in enumerate(rows):
        text = model.decode(prompt.ids + row.ids).removeprefix(prompt.hidden)
        if index > 0:
            console.write("\n")  # a blank line between two samples
        if live is not None and index == LIVE_ROW:
            console.write(live.flush() + "\n")
        else:
            console.status(_header(index, settings.num_samples))
            console.write(text + "\n")
        saved = save_sample(runtime.out_dir, index, text)
        note = ""
        if model.analyse is not None:
            analysis = model.analyse(text, row.ids, row.stopped)
            atomic.write_json(saved.with_suffix(".json"), analysis.report)
            note = f" ({analysis.summary})"
        console.status(f"--- saved {saved}{note} ---")
        texts.append(text)
    for speed in speeds:
        console.status(speed.line())
    return texts


def _header(index: int, count: int) -> str:
    return f"--- sample {index + 1}/{count} ---"
