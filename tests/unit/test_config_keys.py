"""Every config key earns its place: a shipped config sets it, or a test asserts its effect.

The keys come from walking the schema (`config.leaf_fields`), so a key added to a section
without a use shows up here. A key no shipped file sets names the test that covers it in
`COVERED_BY`; that the named test exists is checked too, by reading its module.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, cast

from ml_playground.config import leaf_fields

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ml_playground"
SHIPPED = [
    *sorted(PACKAGE.glob("configs/*.toml")),
    *sorted(PACKAGE.glob("experiments/*/config.toml")),
    PACKAGE / "experiments" / "default_config.toml",
    *sorted((ROOT / "benchmarks").glob("*.toml")),
]

EXPORT = "tests/integration/test_export_pipeline.py::"
EXPORT_HF = "tests/integration/test_export_hf.py::"
CONFIG = "tests/unit/test_config.py::"
REFUSED = CONFIG + "test_invalid_experiment_config_names_key_and_experiment_file"
COVERED_BY: Mapping[str, str] = {
    "export.hf.enabled": "tests/integration/test_finetune_exported_gpt.py::"
    "test_an_exported_gpt_fine_tunes_with_lora_and_converts_to_a_gguf_of_the_merged_model",
    "export.hf.export_dir": "tests/e2e/test_export_hf_cli.py::"
    "test_an_hf_export_dir_holding_foreign_files_is_one_error_line_and_stays",
    "export.ollama.adapter_only": EXPORT_HF
    + "test_adapter_only_export_writes_base_and_adapter_with_an_adapter_line",
    "export.ollama.checkpoint": EXPORT + "test_checkpoint_last_is_exported_when_asked",
    "export.ollama.convert_bin": "tests/e2e/test_export_cli.py::"
    "test_export_of_a_fine_tuned_model_with_a_missing_convert_bin_is_one_error_line",
    "export.ollama.create": EXPORT + "test_ollama_create_runs_when_ollama_is_on_path",
    "export.ollama.model_name": EXPORT
    + "test_export_writes_gguf_modelfile_readme_checksums_and_stamp",
    "export.ollama.quant_bin": EXPORT_HF + "test_merged_export_merges_converts_and_quantizes",
    "export.ollama.stop": EXPORT + "test_export_writes_gguf_modelfile_readme_checksums_and_stamp",
    "export.ollama.template": EXPORT
    + "test_a_template_under_export_ollama_replaces_the_raw_completion_template",
    "export.ollama.system": "tests/integration/test_chat.py::"
    "test_the_system_prompt_opens_every_turn_and_outlives_trimming",
    "prepare.chunk_bytes": "tests/unit/test_token_dataset.py::"
    "test_multibyte_character_cut_by_a_chunk_boundary_survives",
    "prepare.dataset": "tests/unit/test_registry.py::"
    "test_prepare_dataset_picks_another_experiments_preparer",
    "prepare.download_url": "tests/e2e/test_offline_cli.py::"
    "test_a_download_url_whose_host_does_not_resolve_is_one_error_line_after_one_attempt",
    "prepare.hf_dataset": "tests/unit/test_hf_datasets.py::"
    "test_a_saved_dataset_split_is_rendered_and_its_bad_rows_counted_by_row_number",
    "prepare.hf_dataset_subset": "tests/unit/test_hf_datasets.py::"
    "test_hf_dataset_subset_picks_that_configuration_of_the_dataset",
    "prepare.hf_dataset_split": "tests/unit/test_hf_datasets.py::"
    "test_another_split_or_changed_rows_prepare_again",
    "prepare.raw_dir": "tests/integration/test_records.py::"
    "test_prepare_writes_records_a_tokenizer_with_structure_tokens_and_meta",
    "prepare.speeches.date_from": "tests/unit/test_speeches.py::"
    "test_period_party_and_date_filters_say_why_each_speech_was_left_out",
    "prepare.speeches.date_to": "tests/unit/test_speeches.py::"
    "test_period_party_and_date_filters_say_why_each_speech_was_left_out",
    "prepare.speeches.max_records": "tests/integration/test_records.py::"
    "test_max_records_keeps_only_the_first_speeches_read",
    "sample.sample.stream": "tests/integration/test_sample_gpt.py::"
    "test_streamed_samples_appear_on_stdout_and_the_checkpoint_used_on_stderr",
    "train.data.block_size": "tests/integration/test_train_gpt.py::"
    "test_data_block_size_cuts_the_training_windows_below_the_models_context",
    "train.data.dataset_dir": CONFIG + "test_train_data_dir_follows_prepare_dataset_dir_unless_set",
    # Prepare writes fixed names; the loader refuses any other (see config_loader.py).
    "train.data.train_bin": REFUSED,
    "train.data.val_bin": REFUSED,
    "train.data.meta_file": REFUSED,
    "train.hf_model.revision": "tests/unit/test_finetune_hub.py::"
    "test_unknown_model_and_unknown_revision_name_the_key_to_fix",
    "train.model.mlp_hidden": "tests/unit/test_llama.py::"
    "test_swiglu_width_defaults_to_eight_thirds_rounded_up_and_can_be_set",
    "train.model.n_kv_head": "tests/unit/test_llama.py::"
    "test_llama_parameters_have_no_biases_no_position_table_and_narrow_kv_with_gqa",
    "train.model.rope_base": "tests/e2e/test_export_hf_cli.py::"
    "test_a_llama_run_exports_a_folder_transformers_runs_like_our_model",
    "train.model.vocab_size": "tests/integration/test_train_gpt.py::"
    "test_a_vocab_size_larger_than_the_tokenizers_trains_and_samples_only_known_ids",
    "train.optim.muon_momentum": "tests/unit/test_optim.py::"
    "test_muon_momentum_reaches_the_muon_optimizer",
    "train.runtime.eval_only": "tests/integration/test_train_gpt.py::"
    "test_eval_only_reports_losses_without_training_or_writing_checkpoints",
}
# Keys set by no shipped config and asserted by no test yet: a key added here is reported
# by name, to be given a test; none is today.
UNCOVERED: frozenset[str] = frozenset()


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from leaves(cast(Mapping[str, Any], value), f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def shipped_keys() -> set[str]:
    keys = {key for path in SHIPPED for key in leaves(tomllib.loads(path.read_text("utf-8")))}
    # The shipped defaults set sample.runtime_ref = "train.runtime": every train.runtime key
    # a config sets is the sampling runtime's too.
    assert "sample.runtime_ref" in keys
    return keys


def counterpart(key: str) -> str:
    """sample.runtime.<key> is set through train.runtime.<key> (sample.runtime_ref)."""
    prefix = "sample.runtime."
    return "train.runtime." + key.removeprefix(prefix) if key.startswith(prefix) else key


@cache
def functions_of(module: str) -> frozenset[str]:
    tree = ast.parse((ROOT / module).read_text("utf-8"))
    return frozenset(node.name for node in tree.body if isinstance(node, ast.FunctionDef))


def test_every_config_key_is_set_by_a_shipped_config_or_covered_by_a_named_test() -> None:
    shipped = shipped_keys()
    accounted = shipped | set(COVERED_BY) | UNCOVERED

    missing = [key for key in leaf_fields() if counterpart(key) not in accounted]

    assert missing == []


def test_the_lists_name_only_schema_keys_no_shipped_config_sets() -> None:
    schema, shipped = set(leaf_fields()), shipped_keys()
    listed = set(COVERED_BY) | UNCOVERED

    assert listed <= schema, sorted(listed - schema)
    assert not listed & shipped, sorted(listed & shipped)
    assert not set(COVERED_BY) & UNCOVERED


def test_every_covering_test_exists() -> None:
    absent: list[str] = []
    for key, reference in COVERED_BY.items():
        module, _, name = reference.partition("::")
        if not (ROOT / module).is_file() or name not in functions_of(module):
            absent.append(f"{key}: {reference}")

    assert absent == []
