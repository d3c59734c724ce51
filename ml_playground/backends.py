"""The model backend a config selects, and what each step takes from it.

`backend_for` is the one place that decides: a config with `[train.hf_model]` selects the
Hugging Face + LoRA backend, any other the from-scratch GPT. A backend's half of a step
lives beside the step, named for the backend (`train/gpt.py` and `train/hf.py`,
`sample/gpt.py` and `sample/hf.py`, `export/gpt.py` and `export/hf.py`); this module only
wires them. Each method imports its half when called, so a step loads torch,
transformers or gguf only for what it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ml_playground.config import ExperimentConfig
from ml_playground.errors import CheckpointError, ExportError

if TYPE_CHECKING:
    from ml_playground.export import PreparedExport
    from ml_playground.sample.backend import LoadedModel


class Backend(Protocol):
    """What the steps take from a model backend."""

    def train(self, config: ExperimentConfig) -> None:
        """Train (or resume) the run in out_dir."""
        ...

    def load(self, config: ExperimentConfig) -> LoadedModel:
        """The trained model of out_dir, ready for sample, chat and eval."""
        ...

    def require_trained(self, config: ExperimentConfig) -> None:
        """Raise one error line when out_dir holds no trained model to evaluate."""
        ...

    def export_gguf(self, config: ExperimentConfig, name: str) -> PreparedExport: ...

    def export_hf_folder(self, config: ExperimentConfig, name: str) -> PreparedExport: ...


def backend_for(config: ExperimentConfig) -> Backend:
    return HFBackend() if config.uses_hf_model else GPTBackend()


class GPTBackend:
    """The from-scratch GPT."""

    def train(self, config: ExperimentConfig) -> None:
        from ml_playground.train.gpt import train_gpt  # noqa: PLC0415 - see module docstring

        train_gpt(config)

    def load(self, config: ExperimentConfig) -> LoadedModel:
        from ml_playground.sample.gpt import load_gpt  # noqa: PLC0415 - see module docstring

        return load_gpt(config)

    def require_trained(self, config: ExperimentConfig) -> None:
        from ml_playground import run_folder  # noqa: PLC0415 - see module docstring

        run_folder.gpt_for_sampling(config.sample.runtime.out_dir)  # raises when there is none

    def export_gguf(self, config: ExperimentConfig, name: str) -> PreparedExport:
        from ml_playground.export.gpt import GPTExport  # noqa: PLC0415 - see module docstring

        return GPTExport.prepare(config, name)

    def export_hf_folder(self, config: ExperimentConfig, name: str) -> PreparedExport:
        from ml_playground.export.hf_folder import HFFolderExport  # noqa: PLC0415 - see module docstring

        return HFFolderExport.prepare(config, name)


class HFBackend:
    """A Hugging Face model fine-tuned with LoRA (or all its weights)."""

    def train(self, config: ExperimentConfig) -> None:
        from ml_playground.train.hf import train_lora  # noqa: PLC0415 - see module docstring

        train_lora(config)

    def load(self, config: ExperimentConfig) -> LoadedModel:
        from ml_playground.sample.hf import load_hf  # noqa: PLC0415 - see module docstring

        return load_hf(config)

    def require_trained(self, config: ExperimentConfig) -> None:
        # Without adapters, loading would fall back to the bare base model.
        from ml_playground import run_folder  # noqa: PLC0415 - see module docstring
        from ml_playground.sample.evaluate import TRAIN_FIRST  # noqa: PLC0415 - see module docstring

        out_dir = config.sample.runtime.out_dir
        if run_folder.adapters_for_sampling(out_dir) is None:
            raise CheckpointError(
                f"no adapters in {run_folder.adapters_root(out_dir)} (looked for "
                f"{', '.join(run_folder.SAMPLING_ORDER)}), so there is no fine-tuned "
                f"model to evaluate; {TRAIN_FIRST}"
            )

    def export_gguf(self, config: ExperimentConfig, name: str) -> PreparedExport:
        from ml_playground.export.hf import HFExport  # noqa: PLC0415 - see module docstring

        return HFExport.prepare(config, name)

    def export_hf_folder(self, config: ExperimentConfig, name: str) -> PreparedExport:
        from ml_playground.export.hf_folder import FINE_TUNED_REFUSAL  # noqa: PLC0415 - see module docstring

        raise ExportError(FINE_TUNED_REFUSAL)
