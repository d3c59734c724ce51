"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.go_helpers import build_go_renderer


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Go's text/template as Ollama runs it (tests/go/render_template), built once."""
    return build_go_renderer(tmp_path_factory.mktemp("go"))
