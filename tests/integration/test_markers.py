"""Markers follow folders: `pytest -m e2e` selects exactly the tests under tests/e2e/.

tests/conftest.py applies the marker from each test's folder. This runs a real
`pytest --collect-only` over the repository in a subprocess and reads the node ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent


def collected_node_ids(marker: str) -> list[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            marker,
            "--collect-only",
            "-q",
            "-n",
            "0",
            # another engineer's half-written test module must not hide the selection
            "--continue-on-collection-errors",
            "tests",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    node_ids = [line for line in result.stdout.splitlines() if "::" in line]
    assert node_ids, result.stdout + result.stderr
    return node_ids


def test_e2e_marker_selects_exactly_the_e2e_folder() -> None:
    node_ids = collected_node_ids("e2e")

    outside = [node for node in node_ids if not node.startswith("tests/e2e/")]
    assert outside == []
    e2e_files = {
        path.relative_to(REPO_ROOT).as_posix() for path in (TESTS_DIR / "e2e").glob("test_*.py")
    }
    selected_files = {node.split("::")[0] for node in node_ids}
    assert selected_files == e2e_files
