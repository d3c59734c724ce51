"""`train.runtime.compile = true` through the CLI: it trains, compiled, to the eager result.

torch.compile on two cores takes tens of seconds per graph, so the model is the smallest
that still has every piece of a block (one layer, 16 wide) and the run is four steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground import checkpoint, run_folder
from tests.cli_helpers import Cli
from tests.e2e.test_gpt_pipeline_cli import TIMEOUT, prepared_run, reconfigure, tiny
from tests.toml_helpers import TomlValue

SMALLEST: dict[str, TomlValue] = {
    "train.model.n_layer": 1,
    "train.model.n_embd": 16,
    "train.model.block_size": 16,
    "train.runtime.max_iters": 4,
    "train.runtime.eval_interval": 4,
    "train.runtime.eval_iters": 1,
    "train.runtime.dtype": "float32",
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_train_with_compile_on_runs_compiled_and_matches_the_eager_run(
    tmp_path: Path, bytecode_cache: Path, arch: str
) -> None:
    workdir = tmp_path.resolve()
    cli = Cli(workdir, bytecode_cache=bytecode_cache, timeout=TIMEOUT)
    changes = {**SMALLEST, "train.model.arch": arch}
    folder = prepared_run(workdir, cli, {**changes, "train.runtime.compile": True})

    compiled = cli.run(*tiny("train", folder))
    reconfigure(folder, {**changes, "train.runtime.out_dir": "eager"})
    eager = cli.run(*tiny("train", folder))

    assert compiled.returncode == 0, compiled.stderr
    assert "Traceback" not in compiled.stderr
    assert "compile:" not in compiled.stdout, "compiled without falling back"
    assert eager.returncode == 0, eager.stderr
    ran = checkpoint.load(folder / "out" / run_folder.LAST_FILE).state
    reference = checkpoint.load(folder / "eager" / run_folder.LAST_FILE).state
    assert ran.iter_num == reference.iter_num == 4
    # Inductor fuses and reorders float32 arithmetic: equal up to rounding, not bitwise.
    assert ran.best_val_loss == pytest.approx(reference.best_val_loss, rel=1e-4)
