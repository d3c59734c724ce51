"""Distributed training on CPU: two Gloo processes under torchrun, as users launch them.

Each test starts `torchrun --standalone --nproc_per_node=2 -m ml_playground.cli train` in a
subprocess on a tiny char-level experiment in tmp_path, and compares the checkpoints rank 0
writes with single-process runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ml_playground import checkpoint, pipeline, run_folder
from ml_playground.config_loader import LoadedConfig
from ml_playground.errors import ConfigError
from ml_playground.experiments import Experiment
from ml_playground.train.gpt import train_gpt
from tests.cli_helpers import GLOO_TEARDOWN_ABORT, Cli
from tests.conftest import REPO_ROOT
from tests.experiments import char_gpt, prepare
from tests.toml_helpers import TomlValue

pytestmark = GLOO_TEARDOWN_ABORT

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone")
DDP_SETTINGS: dict[str, TomlValue] = {
    "train.model.dropout": 0.0,
    "train.data.sampler": "sequential",
    "train.runtime.max_iters": 12,
    "train.runtime.eval_interval": 6,
    "train.runtime.eval_iters": 2,
    "train.runtime.log_interval": 6,
    "train.schedule.lr_decay_iters": 12,
}


def torchrun(folder: Path, nproc: int) -> Cli:
    """The CLI in `folder` under torch's launcher with `nproc` processes."""
    return Cli(
        folder,
        env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
        launcher=(*TORCHRUN, f"--nproc_per_node={nproc}"),
    )


def launch(folder: Path, *, nproc: int, module: str = "ml_playground.cli") -> str:
    """Train the experiment in `folder` with `nproc` processes; return the combined output."""
    result = torchrun(folder, nproc).run("train", folder, module=module)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def experiment(folder: Path, **changes: TomlValue) -> Path:
    prepare(char_gpt(folder, {**DDP_SETTINGS, **changes}))
    return folder


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return dict(checkpoint.load(folder / "out" / run_folder.LAST_FILE).model)


def last_state(folder: Path) -> checkpoint.TrainingState:
    return checkpoint.load(folder / "out" / run_folder.LAST_FILE).state


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One 12-step run on 2 ranks with batch 4, shared by the parity and resume tests
    (the module's tests run in one xdist group, so it is launched once)."""
    folder = experiment(tmp_path_factory.mktemp("ddp") / "two", **{"train.data.batch_size": 4})
    return folder, launch(folder, nproc=2)


@pytest.mark.xdist_group("ddp")
def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(
    tmp_path: Path, two_ranks: tuple[Path, str]
) -> None:
    two, output = two_ranks
    one = experiment(tmp_path / "one", **{"train.data.batch_size": 8})

    train_gpt(char_gpt(one, {**DDP_SETTINGS, "train.data.batch_size": 8}).config)

    assert "all 2 ranks hold identical weights" in output
    assert "256 tokens per optimizer step" in output  # 4 sequences x 32 tokens x 2 ranks
    distributed, single = final_weights(two), final_weights(one)
    assert distributed.keys() == single.keys()
    # The gradients agree to float rounding (the all-reduce sums in another order); AdamW
    # divides by sqrt(v), which magnifies rounding where gradients are tiny (query/key
    # weights early on): weights of size ~0.1 agree to 1e-5..1e-4 after 12 steps. A wrong
    # split of the batch would differ by the size of an update, lr = 1e-2, per step.
    for name, tensor in single.items():
        torch.testing.assert_close(distributed[name], tensor, rtol=0, atol=2e-4, msg=name)


@pytest.mark.xdist_group("ddp")
def test_muon_on_two_ranks_matches_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    # DDP averages the gradients before the step, so each rank's Muon orthogonalises the
    # same matrix and the replicas stay identical without any Muon-specific code.
    muon: dict[str, TomlValue] = {"train.optim.name": "muon"}
    two = experiment(tmp_path / "two", **{**muon, "train.data.batch_size": 4})
    one = experiment(tmp_path / "one", **{**muon, "train.data.batch_size": 8})

    output = launch(two, nproc=2)
    train_gpt(char_gpt(one, {**DDP_SETTINGS, **muon, "train.data.batch_size": 8}).config)

    assert "all 2 ranks hold identical weights" in output
    # Weights are no sharp comparison here: Newton-Schulz lifts every singular direction
    # of the momentum to about the same size, rounding noise included, so even one process
    # with two micro-batches of 4 ends ~7e-3 away from one batch of 8 after 12 steps (and
    # two ranks evaluate other batches than one). Both runs must have learned alike: from
    # 4.16 untrained to about 3.35.
    distributed, single = last_state(two), last_state(one)
    assert distributed.best_val_loss == pytest.approx(single.best_val_loss, abs=0.1)
    assert distributed.best_val_loss < 3.6


@pytest.mark.xdist_group("ddp")
def test_resume_under_ddp_replays_the_uninterrupted_run(
    tmp_path: Path, two_ranks: tuple[Path, str]
) -> None:
    # Each rank reads its own windows from a cursor that the checkpoint keeps per rank.
    straight, _ = two_ranks
    resumed = experiment(
        tmp_path / "resumed", **{"train.data.batch_size": 4, "train.runtime.max_iters": 6}
    )

    launch(resumed, nproc=2)
    char_gpt(resumed, {**DDP_SETTINGS, "train.data.batch_size": 4})  # back to 12 steps
    output = launch(resumed, nproc=2)

    assert "resuming at step 6" in output
    expected, actual = final_weights(straight), final_weights(resumed)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_a_failing_rank_fails_the_whole_job_without_hanging(tmp_path: Path) -> None:
    folder = experiment(tmp_path / "job", **{"train.runtime.max_iters": 10_000})
    result = torchrun(folder, 2).run("train", folder, module="tests.integration.ddp_failing_rank")

    assert result.returncode != 0
    assert "simulated worker failure" in result.stdout + result.stderr
    assert not (folder / "out" / run_folder.LAST_FILE).exists()


@pytest.mark.parametrize("step", [pipeline.prepare, pipeline.sample, pipeline.report])
def test_single_process_steps_refuse_to_run_under_a_launcher(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: Callable[[Experiment, LoadedConfig], None],
) -> None:
    loaded = char_gpt(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")

    with pytest.raises(ConfigError, match="without torchrun"):
        step(Experiment(tmp_path.name, tmp_path), loaded)
