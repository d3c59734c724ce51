"""LoRA fine-tuning under torchrun and accelerate launch: two Gloo processes on CPU.

Each launch runs the real CLI (`-m ml_playground.cli train <experiment>`) in a subprocess
on a prepared SpeakGer-style experiment in tmp_path that fine-tunes the tiny Qwen2 model
of tests/finetune_helpers.py, and the adapters rank 0 writes are compared with those of
single-process or uninterrupted runs. Launches cost seconds each (every rank imports torch,
transformers and peft), so each test makes the few it needs count.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch

from ml_playground import checkpoint, run_folder
from ml_playground.run_folder import TB_DIR
from ml_playground.train.hf import train_lora
from ml_playground.train.report_card import reported
from tests.cli_helpers import GLOO_TEARDOWN_ABORT, Cli
from tests.conftest import REPO_ROOT
from tests.experiments import speeches_lora
from tests.finetune_helpers import TinyModels, adapter_weights
from tests.integration.ddp_failing_rank import FAILURE
from tests.toml_helpers import TomlValue

pytestmark = GLOO_TEARDOWN_ABORT

LAUNCH_TIMEOUT = 240  # seconds; a hung rank fails the test instead of the suite
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
# accelerate's own CPU switch (--cpu) starts one process unless MPI is set up; --multi_gpu
# hands the job to torch's launcher, which starts N processes whatever the device.
ACCELERATE = (
    *(sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"),
    *("--num_processes", "2", "--num_machines", "1"),
    *("--mixed_precision", "no", "--dynamo_backend", "no"),
    *("--main_process_port", "0"),  # a free port, so parallel test runs do not collide
)
TWO_RANKS = "all 2 ranks hold identical weights"


def launch(
    launcher: Sequence[str],
    folder: Path,
    *,
    module: str = "ml_playground.cli",
    env: Mapping[str, str] | None = None,
    expect_success: bool = True,
) -> tuple[int, str]:
    """Train the experiment in `folder` with two processes; the exit code and all output."""
    environment = {
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        # accelerate launch reads a user's `accelerate config` from here; use none.
        "HF_HOME": str(folder / "hf-home"),
        **(env or {}),
    }
    cli = Cli(folder, env=environment, timeout=LAUNCH_TIMEOUT, launcher=launcher)
    result = cli.run("train", folder, module=module)
    output = result.stdout + result.stderr
    if expect_success:
        assert result.returncode == 0, output
    return result.returncode, output


def out_dir(folder: Path) -> Path:
    return folder / "out"


def written_files(folder: Path) -> list[str]:
    """Every file a run wrote into out_dir, relative, TensorBoard event names generalised."""
    files = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    return sorted(re.sub(r"events\.out\.tfevents\..*", "events", name) for name in files)


def assert_same_tensors(
    expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor], *, atol: float
) -> None:
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        if atol == 0:
            assert torch.equal(actual[name], tensor), name
        else:
            torch.testing.assert_close(actual[name], tensor, rtol=0, atol=atol, msg=name)


@pytest.mark.timeout(600)
def test_two_ranks_with_batch_b_match_one_process_with_batch_2b_and_only_rank_0_writes(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    # Sequential windows: window j goes to rank j % 2, so 2 ranks x 4 sequences per
    # micro-step see exactly the 8 windows one process with batch 8 sees, in each of the
    # two micro-steps of an accumulation (no_sync on the first, all-reduce on the second).
    same_data_order: dict[str, TomlValue] = {
        "train.data.sampler": "sequential",
        "train.data.grad_accum_steps": 2,
        "train.runtime.tensorboard_enabled": True,
    }
    two = tmp_path / "two"
    speeches_lora(two, tiny_models.qwen2, same_data_order | {"train.data.batch_size": 4})
    one_loaded = speeches_lora(
        tmp_path / "one", tiny_models.qwen2, same_data_order | {"train.data.batch_size": 8}
    )
    one = one_loaded.config

    _, output = launch(TORCHRUN, two)
    with reported(one_loaded, "one"):  # as `train` runs it: the report follows the run
        train_lora(one)

    assert TWO_RANKS in output
    assert "512 tokens per optimizer step" in output  # 4 sequences x 32 tokens x 2 x 2 ranks
    # The gradients agree to float rounding (two means of 4 averaged by the all-reduce vs
    # one mean of 8). AdamW divides each update by sqrt(v), which magnifies that rounding
    # where gradients are tiny: lora_A's gradient is proportional to lora_B, which starts
    # at zero. After 6 steps the adapters (entries up to 0.14) differ by at most 5e-7,
    # most in lora_A. Training on one rank's half of the batch without the all-reduce
    # differs by 4e-2. 1e-5 sits 20x above the rounding and 4000x below that mistake.
    for name in (run_folder.LAST, run_folder.FINAL):
        assert_same_tensors(
            adapter_weights(one.train.runtime.out_dir, name),
            adapter_weights(out_dir(two), name),
            atol=1e-5,
        )
    # Rank 0 alone writes and talks: the same files as one process (so none from rank 1,
    # no duplicates, no leftover temporaries; the run report too), one TensorBoard writer,
    # one summary line.
    files = written_files(out_dir(two))
    assert files == written_files(one.train.runtime.out_dir)
    assert files.count(f"{TB_DIR}/events") == 1
    assert output.count("fine-tuning ") == 1
    assert output.count("done: step 6") == 1


@pytest.mark.timeout(900)
def test_a_run_resumed_under_torchrun_ends_bitwise_where_an_uninterrupted_accelerate_run_does(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    # Random windows and adapter dropout draw from per-rank generators, so exactness needs
    # every rank's own sampler and RNG state back; gradient checkpointing (non-reentrant)
    # and accumulation run under DDP along the way.
    settings: dict[str, TomlValue] = {
        "train.data.sampler": "random",
        "train.data.grad_accum_steps": 2,
        "train.peft.lora_dropout": 0.1,
        "train.hf_model.gradient_checkpointing": True,
        "train.runtime.max_iters": 8,
        "train.runtime.eval_interval": 4,
    }
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    speeches_lora(straight, tiny_models.qwen2, settings)
    speeches_lora(resumed, tiny_models.qwen2, settings | {"train.runtime.max_iters": 4})

    # The uninterrupted run goes through accelerate launch: both launchers must give the
    # same processes and environment, so their results must agree to the bit.
    _, straight_output = launch(ACCELERATE, straight)
    launch(TORCHRUN, resumed)
    speeches_lora(resumed, tiny_models.qwen2, settings)  # back to 8 steps
    _, output = launch(TORCHRUN, resumed)

    assert TWO_RANKS in straight_output
    assert "resuming at step 4" in output
    for name in (run_folder.LAST, run_folder.FINAL):
        assert_same_tensors(
            adapter_weights(out_dir(straight), name),
            adapter_weights(out_dir(resumed), name),
            atol=0,
        )
    state = checkpoint.load_state(run_folder.adapters_dir(out_dir(resumed), run_folder.LAST))
    assert state.iter_num == 8
    generators = [entry["generator"] for entry in state.sampler]
    assert len(generators) == len(state.rng) == 2
    assert not torch.equal(generators[0], generators[1])  # each rank its own stream


@pytest.mark.timeout(300)
def test_a_rank_failing_mid_run_ends_the_whole_job_with_its_message(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    folder = tmp_path / "job"
    speeches_lora(folder, tiny_models.qwen2, {"train.runtime.max_iters": 10_000})

    # Rank 1 dies drawing its third batch, while rank 0 waits in the all-reduce of that
    # step; the launcher must end rank 0 (the timeout in `launch` catches a hang).
    code, output = launch(
        TORCHRUN,
        folder,
        module="tests.integration.ddp_failing_rank",
        env={"FAIL_AT_BATCH": "3"},
        expect_success=False,
    )

    assert code != 0
    assert FAILURE in output
    assert not (out_dir(folder) / run_folder.ADAPTERS_DIR).exists()
