"""An experiment is a folder with a config.toml: `[prepare] source` names a built-in source,
so no prepare.py is needed to prepare, train and sample it."""

from __future__ import annotations

import json
from pathlib import Path

from ml_playground import checkpoint, run_folder
from ml_playground.data.sources import TINY_SHAKESPEARE
from tests.cli_helpers import Cli
from tests.experiments import TINY_SETTINGS
from tests.toml_helpers import write_toml

TIMEOUT = 300  # seconds; a loaded CI machine imports torch slowly
MAX_ITERS = 4


def test_a_folder_with_only_a_config_toml_prepares_trains_and_samples(
    tmp_path: Path, bytecode_cache: Path
) -> None:
    folder = tmp_path / "only_config"
    folder.mkdir()
    settings = {
        key: value for key, value in TINY_SETTINGS.items() if key != "prepare.raw_text_path"
    }
    write_toml(
        folder / "config.toml",
        {
            **settings,
            "prepare.source": "text",
            "prepare.fallback_text": "tiny_shakespeare",
            "train.runtime.max_iters": MAX_ITERS,
            "train.runtime.eval_interval": 2,
            "train.runtime.eval_iters": 1,
            "train.schedule.warmup_iters": 1,
            "train.schedule.lr_decay_iters": MAX_ITERS,
        },
    )

    result = Cli(tmp_path, bytecode_cache=bytecode_cache, timeout=TIMEOUT).run("loop", folder)

    assert result.returncode == 0, result.stderr
    assert "using the bundled Tiny Shakespeare" in result.stdout
    meta = json.loads((folder / "datasets" / "meta.json").read_text(encoding="utf-8"))
    assert [entry["path"] for entry in meta["fingerprint"]["inputs"]] == [str(TINY_SHAKESPEARE)]
    out_dir = folder / "out"
    assert checkpoint.load(out_dir / run_folder.LAST_FILE).state.iter_num == MAX_ITERS
    assert list((out_dir / "samples").glob("*.txt"))
    assert sorted(path.name for path in folder.iterdir()) == ["config.toml", "datasets", "out"]
