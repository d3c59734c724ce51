"""Ollama's Modelfile: which weights, how a prompt is wrapped, when to stop, how to sample.

The template must reproduce the text the model saw in training, or it answers a format it
never learned: a from-scratch GPT continues raw text, so its template is the prompt alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ml_playground.config import SampleSettings
from ml_playground.errors import ExportError

RAW_COMPLETION = "{{ .Prompt }}"
# The system prompt, when set, goes first, on its own line, as plain text.
RAW_COMPLETION_WITH_SYSTEM = "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}"


@dataclass(frozen=True)
class SamplingDefaults:
    """The `[sample.sample]` settings, which Ollama applies unless a request overrides them."""

    temperature: float
    top_k: int
    top_p: float

    @classmethod
    def from_settings(cls, settings: SampleSettings) -> SamplingDefaults:
        return cls(settings.temperature, settings.top_k, settings.top_p)


@dataclass(frozen=True)
class Modelfile:
    """What a Modelfile says; `render` writes it in Ollama's syntax."""

    weights: str
    # None leaves the template to Ollama, which reads the chat template stored in the GGUF.
    template: str | None
    sampling: SamplingDefaults
    stops: Sequence[str] = ()
    system: str | None = None
    adapter: str | None = None
    # Learned position embeddings end at the trained context; Ollama must not exceed it.
    context_length: int | None = None
    extra_parameters: Sequence[tuple[str, str]] = field(default_factory=tuple[tuple[str, str]])

    def render(self) -> str:
        lines = [f"FROM {self.weights}"]
        if self.adapter is not None:
            lines.append(f"ADAPTER {self.adapter}")
        if self.template is not None:
            lines.append(f"TEMPLATE {quote(self.template)}")
        if self.system is not None:
            lines.append(f"SYSTEM {quote(self.system)}")
        for stop in _unique(self.stops):
            lines.append(f"PARAMETER stop {quote(stop)}")
        lines.append(f"PARAMETER temperature {_number(self.sampling.temperature)}")
        lines.append(f"PARAMETER top_k {self.sampling.top_k}")
        lines.append(f"PARAMETER top_p {_number(self.sampling.top_p)}")
        if self.context_length is not None:
            lines.append(f"PARAMETER num_ctx {self.context_length}")
        lines.extend(f"PARAMETER {name} {value}" for name, value in self.extra_parameters)
        return "\n".join(lines) + "\n"


def quote(value: str) -> str:
    """A Modelfile string that Ollama's parser reads back as exactly `value`.

    Ollama knows no escapes: a double-quoted value ends at the first quote before a blank;
    a triple-quoted one may span lines and ends at the first triple quote before a blank.
    The parser drops unprintable characters other than newlines and tabs.
    """
    unreadable = [ch for ch in value if not ch.isprintable() and ch not in "\n\r\t"]
    if '"""' in value or unreadable:
        raise ExportError(
            f"cannot write {value!r} into a Modelfile: Ollama's parser cannot read it back;"
            " change the template, system prompt or stop token in [export.ollama]"
        )
    if '"' in value or "\n" in value or "\r" in value:
        return f'"""{value}"""'
    return f'"{value}"'


def raw_completion_template(system: str | None) -> str:
    return RAW_COMPLETION if system is None else RAW_COMPLETION_WITH_SYSTEM


def _number(value: float) -> str:
    """Floats without noise: 0.8, 1, 0.95."""
    return f"{value:g}"


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(value for value in values if value))
