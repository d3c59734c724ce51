"""Test-suite wiring: markers follow folders, and nothing reaches the network."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.finetune_helpers import TinyModels

TESTS_DIR = Path(__file__).parent
REPO_ROOT = TESTS_DIR.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
MARKER_FOLDERS = ("unit", "integration", "e2e", "acceptance")

# Offline by construction: the hub and tiktoken's host are unreachable in CI anyway, and a
# test must never depend on them. tiktoken reads its ranks from the shared cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# xdist runs one worker per core; torch's own thread pool on top of that oversubscribes the
# cores and makes tiny-model ops orders of magnitude slower. One thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# dtype = "auto" caches what it measured about the CPU (cpu_probe.py) under the user's cache
# folder; the suite keeps it in a folder of its own, outside the user's home and the tree.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ml-playground-test-cache-")
if (SHARED_DIR / "tiktoken").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DIR / "tiktoken"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Apply the unit/integration/e2e/acceptance marker from the test's folder."""
    for item in items:
        relative = Path(str(item.path)).relative_to(TESTS_DIR)
        folder = relative.parts[0] if len(relative.parts) > 1 else ""
        if folder in MARKER_FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Tiny Qwen2 and Gemma3 models saved like hub downloads, built once per test process."""
    # Imported here: transformers takes seconds to load and most tests never need it.
    from tests.finetune_helpers import build_tiny_models  # noqa: PLC0415

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the CLI subprocesses (tests/cli_helpers.Cli) cache compiled bytecode, outside
    the source tree.

    Importing torch and torch._dynamo (every optimizer imports it) from source costs about
    15 s of CPU per process; with cached bytecode the later subprocesses take a third.
    Under xdist the workers share one cache in the session's common temp folder (Python
    writes each .pyc atomically, so concurrent writers are safe).
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    cache = shared / "pycache"
    cache.mkdir(exist_ok=True)
    return cache
