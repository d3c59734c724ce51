"""Go's own text/template, for the tests of Ollama templates.

tests/go/render_template is a small Go program that renders a template with the data
Ollama gives it (see its main.go). It is built with the installed Go toolchain into a
folder the caller passes in (a tmp_path), never into the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TESTS_DIR

GO_PROGRAM = TESTS_DIR / "go" / "render_template"
INSTALL_GO = "command -v go || (apt-get update && apt-get install -y golang-go)"


def build_go_renderer(folder: Path) -> Path:
    """Build render_template into `folder`; without Go the test fails, saying how to get it."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "Go is not installed, and this test executes Modelfile templates with Go's own"
            f" text/template; install it: {INSTALL_GO}"
        )
    binary = folder / "render_template"
    # Go 1.21 on could fetch another toolchain for a go.mod; only the installed one runs.
    env = {**os.environ, "GOTOOLCHAIN": "local"}
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_PROGRAM,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    return binary


def render_in_go(renderer: Path, request: dict[str, object]) -> str:
    """What the template in `request` renders, executed by Go as Ollama executes it."""
    done = subprocess.run(
        [str(renderer)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
