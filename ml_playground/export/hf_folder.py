"""Export a from-scratch GPT checkpoint as a Hugging Face model folder, `[export.hf]`.

The folder is what `save_pretrained` writes, so `AutoModelForCausalLM.from_pretrained`
and `AutoTokenizer.from_pretrained` load it with stock transformers classes and no
custom code: `config.json`, `model.safetensors` (float32, as trained), `generation_config.json`,
`tokenizer.json` with `tokenizer_config.json`, and a model card (`README.md`). The
mapping onto transformers' classes is `hf_gpt.py`, the tokenizer `hf_tokenizer.py`. Like
the GGUF bundle it is written whole into a staging folder and swapped in
(`bundle.staged`), then sealed with checksums and an inputs stamp, so an unchanged re-run
is skipped. The folder is a base model for fine-tuning here too:
`[train.hf_model] model_name` accepts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_playground import checkpoint, run_folder
from ml_playground.artifacts import read_artifact
from ml_playground.config import ExperimentConfig
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.dataset_meta import read_meta
from ml_playground.digest import file_digest
from ml_playground.errors import DataError, ExportError
from ml_playground.export.gpt import checkpoint_path
from ml_playground.export.hf_gpt import hf_model
from ml_playground.export.hf_tokenizer import HFTokenizerFiles, hf_tokenizer
from ml_playground.export.readme import example_prompt
from ml_playground.sample.eval_result import EvalResult

ROUTE = "hf-folder-gpt"
# Bump when the bytes this route writes change, so that older stamps no longer match.
ROUTE_VERSION = 1
KEY = "[export.hf] export_dir"
WEIGHTS = "model.safetensors"
FINE_TUNED_REFUSAL = (
    "[export.hf] exports a GPT trained from scratch; this run fine-tunes"
    " [train.hf_model], whose merged model `[train.hf_model] save_merged = true` writes as"
    " a Hugging Face folder (out_dir/merged); set [export.hf] enabled = false"
)


@dataclass(frozen=True)
class HFFolderExport:
    """A checkpoint and its tokenizer, checked to be exportable as a transformers folder."""

    config: ExperimentConfig
    name: str
    source: Path
    ckpt: checkpoint.Checkpoint
    tokenizer: HFTokenizerFiles

    @classmethod
    def prepare(cls, config: ExperimentConfig, name: str) -> HFFolderExport:
        source = checkpoint_path(config.train.runtime.out_dir, None)
        ckpt = checkpoint.load_trained(config.train.runtime.out_dir, source)
        tokenizer = hf_tokenizer(ckpt.tokenizer)
        if tokenizer.size > ckpt.model_args.vocab_size:
            raise ExportError(
                f"{source} has {ckpt.model_args.vocab_size} token rows but its tokenizer"
                f" {ckpt.tokenizer.describe()} has {tokenizer.size} tokens; retrain it"
            )
        return cls(config=config, name=name, source=source, ckpt=ckpt, tokenizer=tokenizer)

    def inputs(self) -> dict[str, Any]:
        import transformers  # noqa: PLC0415 - heavy, export only

        return {
            "route": ROUTE,
            "route_version": ROUTE_VERSION,
            "checkpoint": {"file": self.source.name, "sha256": file_digest(self.source)},
            "model_name": self.name,
            # config.json and the tokenizer files are transformers' own serialisation.
            "transformers": transformers.__version__,
            "card": self._card_facts(),
            "sampling": self.config.sample.sample.model_dump(
                mode="json", include={"start", "temperature", "top_k", "top_p"}
            ),
        }

    def write(self, staging: Path) -> Path:
        """Fill `staging` with the Hugging Face folder; return the weights file."""
        from safetensors.torch import save_file  # noqa: PLC0415  # pyright: ignore[reportUnknownVariableType] - its PathLike is unparameterised; heavy, export only

        args = self.ckpt.model_args
        model = hf_model(
            self.ckpt.model, args, vocab_size=self.tokenizer.size, eos_id=self.tokenizer.eos_id
        )
        model.config.save_pretrained(staging)  # pyright: ignore[reportUnknownMemberType] - untyped library
        save_file(model.tensors, staging / WEIGHTS, metadata={"format": "pt"})
        self._write_generation_config(staging)
        self._write_tokenizer(staging)
        (staging / "README.md").write_text(self._card(model.architecture), encoding="utf-8")
        return staging / WEIGHTS

    def _write_generation_config(self, staging: Path) -> None:
        from transformers import GenerationConfig  # noqa: PLC0415 - heavy, export only

        sampling = self.config.sample.sample
        eos = self.tokenizer.eos_id
        options: dict[str, object] = {"bos_token_id": eos, "eos_token_id": eos}
        if sampling.temperature > 0:
            options |= {
                "do_sample": True,
                "temperature": sampling.temperature,
                "top_k": sampling.top_k or None,
                "top_p": sampling.top_p,
            }
        generation = GenerationConfig(**options)  # type: ignore[no-untyped-call]  # untyped library
        generation.save_pretrained(staging)  # pyright: ignore[reportUnknownMemberType] - untyped library

    def _write_tokenizer(self, staging: Path) -> None:
        from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - heavy, export only

        eos = self.tokenizer.eos_token
        # GPT-2 has one special token for both ends; training never put it in front of a
        # document, and this tokenizer has no post-processor, so encode adds nothing.
        tokens: dict[str, object] = {} if eos is None else {"eos_token": eos, "bos_token": eos}
        fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # untyped library
            tokenizer_object=self.tokenizer.tokenizer,
            model_max_length=self.ckpt.model_args.block_size,
            clean_up_tokenization_spaces=False,
            **tokens,
        )
        fast.save_pretrained(str(staging))  # pyright: ignore[reportUnknownMemberType] - untyped library

    def _card_facts(self) -> dict[str, Any]:
        """What the model card reports besides the model: the data, the run's numbers."""
        out_dir = self.config.train.runtime.out_dir
        return {
            "data": _data_lines(self.config),
            "report": _report_summary(run_folder.report_file(out_dir)),
            "eval": _eval_line(run_folder.eval_result(out_dir)),
        }

    def _card(self, architecture: str) -> str:
        args, state = self.ckpt.model_args, self.ckpt.state
        facts = self._card_facts()
        shape = (
            f"{args.n_layer} layers, {args.n_head} heads ({args.kv_heads} key/value),"
            f" width {args.n_embd}, MLP {args.hidden_size}, context {args.block_size} tokens"
        )
        extras = [
            part
            for part, on in (
                ("QK-norm", args.qk_norm),
                ("tied embeddings", args.tie_embeddings),
                (f"rotary base {args.rope_base:g}", args.arch == "llama"),
            )
            if on
        ]
        numbers = facts["report"] or [
            "| | |",
            "| --- | --- |",
            f"| steps | {state.iter_num:,} |",
            f"| best val loss | {state.best_val_loss:.4f} |",
        ]
        data = "\n".join(f"- {line}" for line in facts["data"]) or "- (no dataset meta.json found)"
        evaluated = f"\n{facts['eval']}\n" if facts["eval"] else ""
        prompt = json.dumps(example_prompt(self.config), ensure_ascii=False)
        return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- ml-playground
- from-scratch
---

# {self.name}

A {args.arch} GPT trained from scratch with ml-playground, exported by `ml-playground
export` from `{self.source}` (step {state.iter_num:,}, best val loss
{state.best_val_loss:.4f}). transformers loads it as `{architecture}` with no custom code.

- Model: {shape}{"; " + ", ".join(extras) if extras else ""}.
- Tokenizer: {self.tokenizer.description}; {self.tokenizer.size:,} ids.

## Data

{data}

## Training run

{chr(10).join(numbers)}
{evaluated}
## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")
model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")
ids = tokenizer({prompt}, return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=100)[0]))
```

Fine-tune it with ml-playground: `[train.hf_model] model_name = "PATH/TO/THIS/FOLDER"`
(a path relative to the config file resolves against its folder); a chat fine-tune needs
`[prepare] chat_template`, since a from-scratch tokenizer has none.

## Notes

- The model continues text as it was trained to; it has no chat template.
- The context is {args.block_size} tokens, the length it was trained on
  (`max_position_embeddings`).
- The padded vocabulary rows of training are dropped: the embedding has exactly the
  tokenizer's ids.
"""


def _data_lines(config: ExperimentConfig) -> list[str]:
    """The prepared dataset's tokenizer, sources and token counts, if its meta.json reads."""
    try:
        meta = read_meta(config.train.data.dataset_dir / META_FILE)
    except DataError:
        return []
    names = ", ".join(f"`{Path(source).name}`" for source in meta.source_inputs())
    sources = names or "(not recorded)"
    digest = meta.fingerprint.content_sha256
    hashed = f" (SHA-256 {digest[:12]})" if digest else ""
    train_split = float(meta.fingerprint.settings["train_split"])
    return [
        f"Sources: {sources}{hashed}.",
        f"{meta.tokens['train']:,} training and {meta.tokens['val']:,} validation tokens"
        f" ({train_split:g} of the text trains).",
    ]


def _report_summary(report: Path) -> list[str]:
    """The summary table of the run's report.md (`ml-playground report`), if there is one."""
    try:
        lines = report.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    if "## Summary" not in lines:
        return []
    table: list[str] = []
    for line in lines[lines.index("## Summary") + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return table


def _eval_line(result: Path) -> str:
    """The run's `eval` numbers on its val split, if `ml-playground eval` was run; an
    unreadable result only leaves them out of the card."""
    if not result.is_file():
        return ""
    try:
        evaluated = read_artifact(EvalResult, result, error=ExportError, remedy="")
    except ExportError:
        return ""
    score = evaluated.scores[0]
    return (
        f"`ml-playground eval` on the {evaluated.evaluated.source}: loss {score.loss:.4f},"
        f" perplexity {score.perplexity:.2f}, {score.bits_per_byte:.4f} bits per byte."
    )
