"""Pretrained models and tokenizers: from a local folder or the Hugging Face hub.

`train.hf_model.model_name` is a local folder (one that exists, or anything that looks
like a path; config.py resolves a relative one against the config file's folder, like
every path, so an exported `[export.hf]` folder works as a base) or a hub id such as
"Qwen/Qwen2.5-1.5B". Hub access honours HF_HUB_OFFLINE
(cache only) and takes a token from HUGGINGFACE_HUB_TOKEN or HF_TOKEN, in the environment
or in a .env file in the working directory or above; the token goes to the hub client
and is never printed. Every failure becomes one ModelLoadError line that says what to do:
a gated model needs its licence accepted and a token, an unknown id a correct one, an
offline machine a cached copy or a local folder.

transformers has no complete type information, so this module is the narrow boundary:
the untyped calls happen here and leave as the small protocols below. It is imported
inside the load functions: it takes seconds, and a missing folder or file should be
reported before that.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import dotenv
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ml_playground.config import PATH_PREFIXES, HFModelConfig
from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

TOKEN_VARIABLES = ("HUGGINGFACE_HUB_TOKEN", "HF_TOKEN")
HUB_URL = "https://huggingface.co"
# Failures of from_pretrained that mean "this model cannot be had", as opposed to bugs.
LOAD_FAILURES = (OSError, ValueError, ImportError, KeyError)


# The protocol lives in data/, whose records dataset needs it and must not import this
# backend; here it keeps the short name the backend's modules use.
Tokenizer = HFTokenizer


class PretrainedConfigFields(Protocol):
    """The part of a model's config.json this package reads."""

    @property
    def model_type(self) -> str: ...


@dataclass(frozen=True)
class ModelSource:
    """Where a pretrained model comes from, and how to ask for it."""

    name: str
    revision: str | None = None
    trust_remote_code: bool = False
    token: str | None = field(default=None, repr=False)
    local_dir: Path | None = None

    @classmethod
    def from_config(cls, hf: HFModelConfig, *, cwd: Path | None = None) -> ModelSource:
        local_dir = local_model_dir(hf.model_name)
        return cls(
            name=hf.model_name,
            revision=hf.revision,
            trust_remote_code=hf.trust_remote_code,
            token=None if local_dir else hub_token(cwd),
            local_dir=local_dir,
        )

    @classmethod
    def local(cls, folder: Path, *, trust_remote_code: bool = False) -> ModelSource:
        """A folder this package wrote itself (adapters, a merged model)."""
        return cls(name=str(folder), trust_remote_code=trust_remote_code, local_dir=folder)

    @property
    def location(self) -> str:
        return str(self.local_dir) if self.local_dir else self.name

    def options(self) -> dict[str, object]:
        """Keyword arguments every from_pretrained call of this source gets."""
        options: dict[str, object] = {"trust_remote_code": self.trust_remote_code}
        if self.local_dir is None:
            options["revision"] = self.revision
            options["token"] = self.token
        return options


def local_model_dir(model_name: str) -> Path | None:
    """The folder `model_name` names, or None for a hub id; a missing folder is an error."""
    path = Path(model_name).expanduser()
    if path.is_dir():
        return path.resolve()
    looks_like_path = model_name.startswith(PATH_PREFIXES) or model_name.count("/") > 1
    if looks_like_path or path.exists():
        raise ModelLoadError(
            f"train.hf_model.model_name {model_name!r} is not a folder; point it at a folder "
            "written by save_pretrained (config.json, weights, tokenizer) or use a hub id "
            "such as 'Qwen/Qwen2.5-0.5B'"
        )
    return None


def hub_token(cwd: Path | None = None) -> str | None:
    """The hub token from the environment, else from the nearest .env file, else None."""
    for name in TOKEN_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    start = cwd or Path.cwd()
    for folder in (start, *start.parents):
        env_file = folder / ".env"
        if env_file.is_file():
            values = dotenv.dotenv_values(env_file)
            for name in TOKEN_VARIABLES:
                value = values.get(name)
                if value:
                    return value
            return None
    return None


def hub_offline() -> bool:
    return bool(hub_constants.HF_HUB_OFFLINE)


def load_tokenizer(source: ModelSource) -> Tokenizer:
    from transformers import AutoTokenizer  # noqa: PLC0415 - see module docstring

    return cast(Tokenizer, _load(AutoTokenizer, source, "tokenizer", {}))


def tokenizer_loader(hf: HFModelConfig) -> Callable[[], Tokenizer]:
    """Loads the base model's tokenizer when called; a missing local folder is an error now."""
    source = ModelSource.from_config(hf)
    return lambda: load_tokenizer(source)


def load_model_config(source: ModelSource) -> PretrainedConfigFields:
    from transformers import AutoConfig  # noqa: PLC0415 - see module docstring

    return cast(PretrainedConfigFields, _load(AutoConfig, source, "model config", {}))


def load_causal_lm(
    source: ModelSource, *, dtype: torch.dtype, attn_implementation: str | None
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - see module docstring

    options: dict[str, object] = {"dtype": dtype}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    return cast("PreTrainedModel", _load(AutoModelForCausalLM, source, "model", options))


class _Loadable(Protocol):
    """transformers' Auto* classes, as far as loading goes."""

    @classmethod
    def from_pretrained(cls, location: str, /, **options: object) -> object: ...


def _load(auto: object, source: ModelSource, what: str, options: Mapping[str, object]) -> object:
    """`auto.from_pretrained(source)`, with a hub or folder problem as one error line.

    `auto` is one of transformers' Auto* classes, which its stubs leave untyped.
    """
    loadable = cast(type[_Loadable], auto)
    try:
        return loadable.from_pretrained(source.location, **source.options(), **options)
    except LOAD_FAILURES as exc:
        raise load_error(exc, source, what) from None


def load_error(exc: BaseException, source: ModelSource, what: str) -> ModelLoadError:
    """One line saying why `what` of `source` could not be loaded and what to do."""
    causes = _chain(exc)
    for kind, explain in HUB_PROBLEMS:
        if any(isinstance(cause, kind) for cause in causes):
            return ModelLoadError(explain(source))
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if source.local_dir is not None:
        return ModelLoadError(
            f"cannot load the {what} from {source.local_dir} ({first_line}); the folder needs "
            "what save_pretrained writes (config.json, weights, tokenizer files)"
        )
    return ModelLoadError(f"cannot load the {what} of {source.name} ({first_line})")


def _gated(source: ModelSource) -> str:
    return (
        f"{source.name} is a gated model: accept its licence at {HUB_URL}/{source.name} with "
        "your account, then set HUGGINGFACE_HUB_TOKEN (environment or .env) to a token of it"
    )


def _no_revision(source: ModelSource) -> str:
    return (
        f"revision {source.revision!r} of {source.name} does not exist on the hub; "
        "fix train.hf_model.revision or remove it"
    )


def _no_repository(source: ModelSource) -> str:
    return (
        f"no model {source.name!r} on the Hugging Face hub (a private one needs "
        "HUGGINGFACE_HUB_TOKEN); check train.hf_model.model_name"
    )


def _not_cached(source: ModelSource) -> str:
    if hub_offline():
        return (
            f"{source.name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"download it once online (`hf download {source.name}`) or set "
            "train.hf_model.model_name to a local folder"
        )
    return (
        f"cannot reach the Hugging Face hub to download {source.name} and it is not cached; "
        "connect to the internet, or set train.hf_model.model_name to a local folder"
    )


# Most specific first: a gated repository is also a RepositoryNotFoundError.
HUB_PROBLEMS: tuple[tuple[type[BaseException], Callable[[ModelSource], str]], ...] = (
    (GatedRepoError, _gated),
    (RevisionNotFoundError, _no_revision),
    (RepositoryNotFoundError, _no_repository),
    (LocalEntryNotFoundError, _not_cached),
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
