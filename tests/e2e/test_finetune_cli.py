"""Fine-tuning from the command line: the experiments by name, with a tiny local model.

`python -m ml_playground.cli <verb> <experiment> --exp-config <tmp>/tiny.toml`, with cwd
in tmp_path. tiny.toml names a tiny model saved in tmp_path as `model_name` and sets
dataset_dir and out_dir relative to itself, so the packaged experiments run unchanged
(their own config.toml names the real hub models) without writing into the source tree
or touching the network.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from ml_playground import checkpoint, run_folder
from ml_playground.config_loader import load_config
from ml_playground.experiments import EXPERIMENTS_ROOT
from ml_playground.train import report_card, reporting
from tests.cli_helpers import (
    Cli,
    assert_one_error_line,
    flip_a_tensor_byte,
    png_pixels,
    report_rows,
    same_tensors,
    scalar_events,
    sha256_of_files,
)
from tests.experiments import chat_settings, lora_settings, prepare_speech_records
from tests.finetune_helpers import (
    QWEN2_TEMPLATE,
    TinyModels,
    adapter_weights,
    build_chat_model,
    conversation,
    copy_member_slices,
    speeches,
    write_jsonl,
    write_speeches_csv,
)
from tests.toml_helpers import TomlValue, write_toml

EXIT_INTERRUPTED = 130
TIMEOUT = 300  # seconds; a loaded CI machine imports torch and transformers slowly
CONFIG = "tiny.toml"


def tiny(cli: Cli, verb: str, experiment: str) -> tuple[str, ...]:
    """`VERB EXPERIMENT --exp-config <cwd>/tiny.toml`: a step of the tiny run."""
    return (verb, experiment, "--exp-config", str(cli.cwd / CONFIG))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path.resolve()


@pytest.fixture
def cli(workdir: Path, bytecode_cache: Path) -> Cli:
    return Cli(workdir, bytecode_cache=bytecode_cache, timeout=TIMEOUT)


def speakger_inputs(workdir: Path) -> None:
    raw = workdir / "raw"
    write_speeches_csv(raw / "Bundestag.csv", speeches(24))
    copy_member_slices(raw)


def configure(
    workdir: Path, model: Path | str, extra: Mapping[str, TomlValue] | None = None
) -> None:
    """Write tiny.toml: the tiny run, reading raw/, with `model` as model_name."""
    settings = lora_settings(Path(model)) | {"prepare.raw_dir": "raw"}
    write_toml(workdir / CONFIG, settings | dict(extra or {}))


def two_step_run(workdir: Path, cli: Cli, tiny_models: TinyModels) -> None:
    """speakger looped for two steps with the tiny Gemma 3: adapters, state and samples."""
    speakger_inputs(workdir)
    configure(workdir, tiny_models.gemma3, {"train.runtime.max_iters": 2})
    assert cli.run(*tiny(cli, "loop", "speakger")).returncode == 0


# --- the done-when runs ------------------------------------------------------------------------


def test_loop_speakger_with_a_tiny_local_model_runs_end_to_end(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    table = write_speeches_csv(
        workdir / "raw" / "Bundestag.csv",
        speeches(24),
        extra_lines=["19,25,False,False,zu wenig Felder"],
    )
    copy_member_slices(workdir / "raw")
    configure(workdir, tiny_models.gemma3)

    result = cli.run(*tiny(cli, "loop", "speakger"))

    assert result.returncode == 0, result.stderr
    assert "24 speeches kept; 1 malformed (1 wrong number of fields)" in result.stdout
    assert f"e.g. {table}:26: wrong number of fields (5 fields, the header has 8)" in result.stdout
    assert "fine-tuning" in result.stdout
    assert "done: step 6" in result.stdout
    out_dir = workdir / "out"
    for name in (run_folder.BEST, run_folder.LAST, run_folder.FINAL):
        assert (run_folder.adapters_dir(out_dir, name) / "adapter_model.safetensors").is_file()
    suffixes = sorted(path.suffix for path in (out_dir / "samples").iterdir())
    assert suffixes == [".json", ".txt"]
    assert f"sampling from {tiny_models.gemma3} + {out_dir / 'adapters' / 'best'}" in result.stderr


def test_loop_bundestag_finetuning_mps_reads_txt_files_and_a_speeches_csv(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    speakger_inputs(workdir)
    nested = workdir / "raw" / "2021" / "03"
    nested.mkdir(parents=True)
    (nested / "rede.txt").write_text("Frau Präsidentin! Wir stimmen zu.", encoding="utf-8")
    configure(workdir, tiny_models.gemma3, {"prepare.speeches.add_structure_tokens": False})

    result = cli.run(*tiny(cli, "loop", "bundestag_finetuning_mps"))

    assert result.returncode == 0, result.stderr
    assert "25 speeches kept" in result.stdout
    assert "done: step 6" in result.stdout
    # Without structure tokens the records are plain text: no speech report beside them.
    assert [path.suffix for path in (workdir / "out" / "samples").iterdir()] == [".txt"]


def test_the_qwen_preset_runs_on_the_generic_preparer_with_a_txt_folder(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    raw = workdir / "raw" / "2021"
    raw.mkdir(parents=True)
    for index, row in enumerate(speeches(12)):
        (raw / f"rede-{index}.txt").write_text(row.text, encoding="utf-8")
    configure(
        workdir,
        tiny_models.qwen2,
        {"prepare.source": "speeches", "sample.sample.require_adapters": True},
    )

    result = cli.run(*tiny(cli, "loop", "bundestag_qwen15b_lora_mps"))

    assert result.returncode == 0, result.stderr
    assert "12 speeches kept" in result.stdout
    assert "done: step 6" in result.stdout
    assert list((workdir / "out" / "samples").glob("*.txt"))


def test_loop_qwen_chat_lora_trains_on_its_bundled_conversations_and_counts_a_bad_line(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    model = build_chat_model(workdir / "chat-model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    bundled = EXPERIMENTS_ROOT / "qwen_chat_lora" / "chats.jsonl"
    chats = workdir / "chats.jsonl"
    chats.write_text(bundled.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    start = "<|im_start|>user\nHow do I run the tests?<|im_end|>\n<|im_start|>assistant\n"
    write_toml(workdir / CONFIG, chat_settings(model) | {"sample.sample.start": start})

    result = cli.run(*tiny(cli, "loop", "qwen_chat_lora"))

    assert result.returncode == 0, result.stderr
    assert "messages records for" in result.stdout
    assert "31 records read; 1 bad (1 not JSON)" in result.stdout
    assert f"e.g. {chats}:31: not JSON" in result.stdout
    assert "done: step 6" in result.stdout
    assert list((workdir / "out" / "samples").glob("*.txt"))


def test_a_jsonl_without_a_usable_record_exits_2_with_one_error_line(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    model = build_chat_model(workdir / "chat-model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    write_jsonl(
        workdir / "chats.jsonl",
        [{"prompt": "Frage?", "completion": "Antwort."}],
        extra_lines=["{not json"],
    )
    write_toml(workdir / CONFIG, chat_settings(model))

    line = assert_one_error_line(cli.run(*tiny(cli, "prepare", "qwen_chat_lora")))

    assert f"0 usable record(s) in {workdir / 'chats.jsonl'}" in line
    assert "2 records read; 2 bad (1 no 'messages' key, 1 not JSON)" in line


def prepared_chats(workdir: Path, cli: Cli, tiny_models: TinyModels) -> dict[str, str]:
    """qwen_chat_lora prepared from six good conversations; the dataset files' hashes."""
    model = build_chat_model(workdir / "chat-model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    write_jsonl(
        workdir / "chats.jsonl", [conversation(f"Frage {i}?", f"Antwort {i}.") for i in range(6)]
    )
    write_toml(workdir / CONFIG, chat_settings(model))
    assert cli.run(*tiny(cli, "prepare", "qwen_chat_lora")).returncode == 0
    return sha256_of_files(workdir / "datasets")


def test_a_messages_file_read_as_text_exits_2_and_the_prepared_dataset_stays(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    before = prepared_chats(workdir, cli, tiny_models)
    model = workdir / "chat-model"
    write_toml(workdir / CONFIG, chat_settings(model) | {"prepare.format": "text"})

    line = assert_one_error_line(cli.run(*tiny(cli, "prepare", "qwen_chat_lora")))

    assert f"0 usable record(s) in {workdir / 'chats.jsonl'}" in line
    assert "6 records read; 6 bad (6 no 'text' key)" in line
    assert sha256_of_files(workdir / "datasets") == before


def test_a_tokenizer_without_a_chat_template_exits_2_naming_the_key_and_the_dataset_stays(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    before = prepared_chats(workdir, cli, tiny_models)
    plain = build_chat_model(workdir / "plain-model", tiny_models, "qwen2", None)
    write_toml(workdir / CONFIG, chat_settings(plain))

    line = assert_one_error_line(cli.run(*tiny(cli, "prepare", "qwen_chat_lora")))

    assert f"the tokenizer of {plain} has no chat template" in line
    assert "[prepare] chat_template" in line
    assert sha256_of_files(workdir / "datasets") == before


def test_an_hf_dataset_that_cannot_be_loaded_offline_exits_2_with_one_error_line(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    model = build_chat_model(workdir / "chat-model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    settings = chat_settings(model) | {"prepare.hf_dataset": "nobody/no-such-dataset"}
    settings.pop("prepare.records_path")
    write_toml(workdir / CONFIG, settings)

    line = assert_one_error_line(cli.run(*tiny(cli, "prepare", "qwen_chat_lora")))

    assert "cannot load [prepare] hf_dataset nobody/no-such-dataset[train]" in line
    assert not (workdir / "datasets").exists()


# --- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_saves_adapters_that_the_next_train_resumes(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    speakger_inputs(workdir)
    configure(workdir, tiny_models.qwen2, {"train.runtime.max_iters": 100_000})
    # Prepared in-process: the subprocesses that matter here are the two trainings.
    loaded = load_config(workdir / CONFIG, EXPERIMENTS_ROOT / "speakger")
    prepare_speech_records(loaded.config, frozenset({".csv"}))
    last = run_folder.adapters_dir(workdir / "out", run_folder.LAST)
    with cli.started(*tiny(cli, "train", "speakger")) as process:
        deadline = time.monotonic() + TIMEOUT
        while not last.exists() and process.poll() is None:
            assert time.monotonic() < deadline, "training never saved its first adapters"
            time.sleep(0.05)

        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    match = re.search(rf"interrupted at step (\d+); saved {re.escape(str(last))}", stdout)
    assert match is not None, stdout
    stopped_at = int(match.group(1))
    assert checkpoint.load_state(last).iter_num == stopped_at

    configure(workdir, tiny_models.qwen2, {"train.runtime.max_iters": stopped_at + 2})
    result = cli.run(*tiny(cli, "train", "speakger"))

    assert result.returncode == 0, result.stderr
    assert f"resuming at step {stopped_at}" in result.stdout
    assert f"done: step {stopped_at + 2}" in result.stdout


def test_a_ctrl_c_at_an_eval_boundary_resumes_into_the_uninterrupted_run(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    # Dropout on the adapters draws from the RNG the training state restores.
    settings: dict[str, TomlValue] = {
        "train.peft.lora_dropout": 0.1,
        "train.runtime.max_iters": 6,
        "train.runtime.eval_interval": 3,
        "train.runtime.tensorboard_enabled": True,
    }
    speakger_inputs(workdir)
    configure(workdir, tiny_models.qwen2, settings | {"train.runtime.out_dir": "straight"})
    loaded = load_config(workdir / CONFIG, EXPERIMENTS_ROOT / "speakger")
    prepare_speech_records(loaded.config, frozenset({".csv"}))
    dataset = sha256_of_files(workdir / "datasets")
    assert cli.run(*tiny(cli, "train", "speakger")).returncode == 0
    configure(workdir, tiny_models.qwen2, settings)
    out_dir = workdir / "out"
    last = run_folder.adapters_dir(out_dir, run_folder.LAST)

    stopped = cli.run(*tiny(cli, "train", "speakger"), fault=("sigint-after-step", "3"))

    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.splitlines()[-1] == (
        f"interrupted; saved {last}, run the same command to resume"
    )
    # The boundary at step 3 was evaluated before the stop, as in the uninterrupted run.
    best = run_folder.adapters_dir(out_dir, run_folder.BEST)
    assert checkpoint.load_state(best).iter_num == checkpoint.load_state(last).iter_num == 3
    resumed = cli.run(*tiny(cli, "train", "speakger"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 3" in resumed.stdout

    straight = workdir / "straight"
    for slot in (run_folder.BEST, run_folder.LAST, run_folder.FINAL):
        assert same_tensors(adapter_weights(straight, slot), adapter_weights(out_dir, slot)), slot
        expected, got = (
            checkpoint.load_state(run_folder.adapters_dir(out, slot)) for out in (straight, out_dir)
        )
        assert (got.iter_num, got.best_val_loss) == (expected.iter_num, expected.best_val_loss)
        assert same_tensors(expected.optimizer, got.optimizer), slot
        assert same_tensors(expected.rng, got.rng), slot
    tag = reporting.TAG_VAL_LOSS
    evaluations = [scalar_events(out / run_folder.TB_DIR)[tag] for out in (straight, out_dir)]
    assert [step for step, _ in evaluations[1]] == [3, 6]
    assert evaluations[1] == evaluations[0]
    assert sha256_of_files(workdir / "datasets") == dataset


# --- errors: one line, exit 2 ------------------------------------------------------------------


def test_missing_model_folder_exits_2_saying_what_to_point_at(workdir: Path, cli: Cli) -> None:
    speakger_inputs(workdir)
    configure(workdir, workdir / "no-such-model")

    line = assert_one_error_line(cli.run(*tiny(cli, "prepare", "speakger")))

    assert f"train.hf_model.model_name '{workdir / 'no-such-model'}' is not a folder" in line


def test_uncached_hub_model_offline_exits_2_saying_how_to_get_it(workdir: Path, cli: Cli) -> None:
    speakger_inputs(workdir)
    configure(workdir, "nobody/no-such-model")

    line = assert_one_error_line(cli.run(*tiny(cli, "prepare", "speakger")))

    assert "nobody/no-such-model is not in the local Hugging Face cache" in line
    assert "HF_HUB_OFFLINE" in line


def test_missing_speeches_csv_exits_2_naming_it(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    configure(workdir, tiny_models.gemma3, {"prepare.raw_text_path": "Bundestag.csv"})

    line = assert_one_error_line(cli.run(*tiny(cli, "prepare", "speakger")))

    assert f"prepare.raw_text_path {workdir / 'Bundestag.csv'} does not exist" in line


def test_adapters_without_their_training_state_stop_train_and_stay_as_they_are(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    two_step_run(workdir, cli, tiny_models)
    last = run_folder.adapters_dir(workdir / "out", run_folder.LAST)
    (last / checkpoint.STATE_FILE).unlink()
    before = sha256_of_files(workdir / "out" / run_folder.ADAPTERS_DIR)

    line = assert_one_error_line(cli.run(*tiny(cli, "train", "speakger")))

    assert f"{last} holds no {checkpoint.STATE_FILE}" in line
    assert "move" in line
    assert sha256_of_files(workdir / "out" / run_folder.ADAPTERS_DIR) == before


def test_a_flipped_bit_in_the_adapters_stops_train_and_sample_and_changes_nothing(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    two_step_run(workdir, cli, tiny_models)
    adapters = workdir / "out" / run_folder.ADAPTERS_DIR
    for slot in (run_folder.LAST, run_folder.BEST):
        flip_a_tensor_byte(adapters / slot / "adapter_model.safetensors")
    before = sha256_of_files(adapters)

    for verb, slot in (("train", run_folder.LAST), ("sample", run_folder.BEST)):
        line = assert_one_error_line(cli.run(*tiny(cli, verb, "speakger")))
        damaged = adapters / slot / "adapter_model.safetensors"
        assert f"{damaged} fails its integrity check" in line, verb
    assert sha256_of_files(adapters) == before


def test_a_failed_prepare_leaves_the_previous_dataset_as_it_was(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    speakger_inputs(workdir)
    configure(workdir, tiny_models.gemma3)
    assert cli.run(*tiny(cli, "prepare", "speakger")).returncode == 0
    before = sha256_of_files(workdir / "datasets")
    table = workdir / "raw" / "Bundestag.csv"
    table.write_text("MPID,Date\n1,2020-01-01\n", encoding="utf-8")  # no speech text column

    line = assert_one_error_line(cli.run(*tiny(cli, "prepare", "speakger")))

    assert str(table) in line
    assert sha256_of_files(workdir / "datasets") == before


@pytest.mark.parametrize("damage", ["garbage adapter_config.json", "truncated weights"])
def test_adapters_damaged_before_their_digests_were_taken_are_one_error_line_and_stay(
    workdir: Path, cli: Cli, tiny_models: TinyModels, damage: str
) -> None:
    two_step_run(workdir, cli, tiny_models)
    best = run_folder.adapters_dir(workdir / "out", run_folder.BEST)
    if damage == "truncated weights":
        weights = best / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (best / "adapter_config.json").write_text("{not json", encoding="utf-8")
    # Digests that vouch for the damage: peft's own reading has to report it.
    checkpoint.seal_adapters(best)
    before = sha256_of_files(best)

    line = assert_one_error_line(cli.run(*tiny(cli, "sample", "speakger")))

    assert f"the adapters in {best} cannot be loaded" in line
    assert sha256_of_files(best) == before


def test_sampling_without_adapters_when_they_are_required_exits_2(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    configure(workdir, tiny_models.gemma3, {"sample.sample.require_adapters": True})

    line = assert_one_error_line(cli.run(*tiny(cli, "sample", "speakger")))

    assert f"no adapters in {workdir / 'out' / 'adapters'}" in line
    assert "require_adapters" in line


def test_a_lora_loop_reports_trainable_parameters_and_its_sample(
    workdir: Path, cli: Cli, tiny_models: TinyModels
) -> None:
    model = build_chat_model(workdir / "chat-model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    chats = [conversation(f"Frage {n}?", "Antwort.") for n in range(8)]
    write_jsonl(workdir / "chats.jsonl", chats)
    settings = chat_settings(model) | {"train.runtime.tensorboard_enabled": True}
    write_toml(workdir / CONFIG, settings)

    result = cli.run(*tiny(cli, "loop", "qwen_chat_lora"))

    assert result.returncode == 0, result.stderr
    out_dir = workdir / "out"
    assert png_pixels(out_dir / run_folder.PLOT_FILE) == (1000, 400)
    report = out_dir / run_folder.REPORT_FILE
    rows = report_rows(report)
    scalars = scalar_events(out_dir / run_folder.TB_DIR)
    assert rows["steps"] == "6 of 6"
    val = scalars[reporting.TAG_VAL_LOSS]
    assert rows["last val loss"] == f"{val[-1][1]:.4f} at step {val[-1][0]}"
    trainable = int(rows["trainable parameters"].replace(",", ""))
    assert 0 < trainable < int(rows["parameters"].replace(",", ""))
    assert trainable == scalars[reporting.TAG_TRAINABLE][-1][1]
    # The loop rebuilt the report after sampling: it shows the sample, as TensorBoard does.
    (saved,) = (out_dir / "samples").glob("*.txt")
    sample = saved.read_text(encoding="utf-8")
    assert sample in report.read_text(encoding="utf-8")
    texts = report_card.read_events(out_dir).texts[reporting.TEXT_FIRST_SAMPLE]
    assert [text for _, text in texts] == [sample]
