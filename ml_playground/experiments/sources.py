"""The built-in sources that `[prepare] source` names, so most experiments need no code.

    text      a text corpus for the from-scratch GPT, found by data/sources.py's rule
              (raw_text_path, raw_dir, ..., fallback_text) and read by data/corpus.py
    speeches  speeches for a Hugging Face model: tables (.csv) and single speeches (.txt)
              below raw_dir or in raw_text_path, of the kinds prepare.speeches.suffixes
              lists (data/speeches/dataset.py)
    records   JSONL records (text, prompt_completion, messages) in records_path, or the
              rows of prepare.hf_dataset, for a Hugging Face model (data/chat_records.py)

Each is a `Preparer` like one an experiment registers; `resolve_preparer` picks it. The
speech and record sources load the base model's tokenizer here, above `data/`, which
receives it as an argument and so never imports the Hugging Face backend.
"""

from __future__ import annotations

from collections.abc import Mapping

from ml_playground.config import PrepareSource
from ml_playground.data.corpus import prepare_corpus
from ml_playground.data.sources import text_sources
from ml_playground.data.speeches.source import speech_sources
from ml_playground.experiments import PrepareContext, Preparer


def prepare_text(ctx: PrepareContext) -> None:
    prepare_corpus(ctx.config, text_sources(ctx.config.prepare), force=ctx.force)


def prepare_speeches(ctx: PrepareContext) -> None:
    # Imported here: transformers loads for seconds, and the text source never needs it.
    from ml_playground.data.speeches.dataset import prepare_speech_dataset  # noqa: PLC0415
    from ml_playground.data.writer import require_hf_model  # noqa: PLC0415
    from ml_playground.finetune.hub import tokenizer_loader  # noqa: PLC0415

    prepare = ctx.config.prepare
    sources = speech_sources(prepare, frozenset(prepare.speeches.suffixes))
    load_tokenizer = tokenizer_loader(require_hf_model(ctx.config))
    print(prepare_speech_dataset(ctx.config, sources, load_tokenizer, force=ctx.force).message)


def prepare_records(ctx: PrepareContext) -> None:
    from ml_playground.data.chat_records import prepare_chat_dataset  # noqa: PLC0415 - see above
    from ml_playground.data.writer import require_hf_model  # noqa: PLC0415 - see above
    from ml_playground.finetune.hub import tokenizer_loader  # noqa: PLC0415 - see above

    load_tokenizer = tokenizer_loader(require_hf_model(ctx.config))
    print(prepare_chat_dataset(ctx.config, load_tokenizer, force=ctx.force).message)


BUILT_IN_SOURCES: Mapping[PrepareSource, Preparer] = {
    "text": prepare_text,
    "speeches": prepare_speeches,
    "records": prepare_records,
}
