"""Which process this is: the launcher's environment, read without starting any process."""

from __future__ import annotations

import pytest

from ml_playground.distributed import MPI_WORLD_SIZES, Ranks, ranks_from_env
from ml_playground.errors import ConfigError

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", *MPI_WORLD_SIZES)


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_without_a_launcher_this_is_rank_0_of_1() -> None:
    assert ranks_from_env() == Ranks(rank=0, local_rank=0, world_size=1)


def test_torchruns_variables_place_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)

    assert ranks_from_env() == Ranks(rank=3, local_rank=1, world_size=4)


@pytest.mark.parametrize("variable", MPI_WORLD_SIZES)
def test_an_mpi_launch_is_refused_rather_than_training_each_process_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "2")

    with pytest.raises(ConfigError, match=rf"MPI launcher \({variable}=2\).*torchrun"):
        ranks_from_env()


def test_a_single_process_mpi_job_is_just_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMI_SIZE", "1")

    assert not ranks_from_env().is_distributed
