"""The README.md that travels with an export: what is in the folder and how to run it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ml_playground.config import ExperimentConfig
from ml_playground.errors import DataError
from ml_playground.export.bundle import CHECKSUMS, STAMP
from ml_playground.export.modelfile import SamplingDefaults
from ml_playground.sample.prompt import read_prompt

FALLBACK_PROMPT = "Once upon a time"


@dataclass(frozen=True)
class BundleReadme:
    model_name: str
    source: str
    weights: Sequence[tuple[str, str]]
    prompt: str
    sampling: SamplingDefaults
    notes: Sequence[str] = ()
    context_length: int | None = None

    def render(self) -> str:
        files = [
            *self.weights,
            ("Modelfile", "Ollama recipe: weights, prompt template, stop tokens, sampling"),
            (CHECKSUMS, f"checksums; `sha256sum -c {CHECKSUMS}` verifies the folder"),
            (STAMP, "what this export was made from; an unchanged re-run is skipped"),
        ]
        table = "\n".join(f"| `{name}` | {what} |" for name, what in files)
        prompt = self.prompt.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        s = self.sampling
        llama_args = f"--temp {s.temperature:g} --top-k {s.top_k} --top-p {s.top_p:g}"
        if self.context_length is not None:
            llama_args += f" -c {self.context_length}"
        main_gguf = self.weights[0][0]
        notes = "\n".join(f"- {note}" for note in self.notes)
        return f"""# {self.model_name}

Exported by `ml-playground export` from {self.source}.

| file | what |
| --- | --- |
{table}

## Run with Ollama

```bash
ollama create {self.model_name} -f Modelfile
ollama run {self.model_name} "{prompt}"
```

## Run with llama.cpp

```bash
llama-cli -m {main_gguf} -p "{prompt}" -n 200 {llama_args}
```

## Notes

{notes}
"""


def example_prompt(config: ExperimentConfig) -> str:
    """The configured sample prompt, for the README's example commands."""
    try:
        prompt = read_prompt(config.sample.sample.start)
    except DataError:
        return FALLBACK_PROMPT
    return prompt.strip() or FALLBACK_PROMPT
