"""The first run with no network, and sample output fit for a file or a pipe, through the
real CLI in a subprocess.

The network is blocked as on a machine without one: every proxy variable points at a
closed local port (so any HTTP request fails at once, without leaving the machine),
tiktoken's cache is an empty folder and the Hugging Face hub is offline. The shakespeare
experiment runs by name with a tiny config in tmp_path (`--exp-config`); the config's
relative paths resolve against its own folder, so nothing is written into the source tree.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from ml_playground import checkpoint, run_folder
from ml_playground.data.sources import TINY_SHAKESPEARE
from tests.cli_helpers import Cli, assert_one_error_line
from tests.conftest import SHARED_DIR
from tests.toml_helpers import TomlValue, write_toml

TIMEOUT = 300  # seconds; a loaded CI machine imports torch slowly
BLOCKED_PROXY = "http://127.0.0.1:9"  # the discard port: closed, so connections are refused
PROXY_VARIABLES = (
    *("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
)
SHARED_SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"
EXIT_BROKEN_PIPE = 141
NUM_SAMPLES = 2

# One worker runs the whole module, so the offline first run is trained once.
pytestmark = pytest.mark.xdist_group("offline_first_run")

TINY_SHAKESPEARE_RUN: Mapping[str, TomlValue] = {
    "prepare.tokenizer": "tiktoken",
    "prepare.encoding": "gpt2",
    "prepare.dataset_dir": "datasets",
    "train.data.dataset_dir": "datasets",
    "train.data.batch_size": 4,
    "train.model.arch": "llama",
    "train.model.n_layer": 1,
    "train.model.n_head": 2,
    "train.model.n_embd": 32,
    "train.model.block_size": 32,
    "train.schedule.warmup_iters": 1,
    "train.schedule.lr_decay_iters": 4,
    "train.runtime.out_dir": "out",
    "train.runtime.max_iters": 4,
    "train.runtime.eval_interval": 2,
    "train.runtime.eval_iters": 1,
    "train.runtime.log_interval": 2,
    "train.runtime.device": "cpu",
    "train.runtime.dtype": "float32",
    "train.runtime.tensorboard_enabled": False,
    "sample.sample.start": "ROMEO:",
    "sample.sample.num_samples": NUM_SAMPLES,
    "sample.sample.max_new_tokens": 24,
}


def offline_cli(folder: Path, tiktoken_cache: Path, *, proxy: str | None) -> Cli:
    """The CLI in `folder` in the user's environment, offline: proxies at `proxy` (None: no
    proxy at all), tiktoken's cache in `tiktoken_cache`."""
    env: dict[str, str | None] = dict.fromkeys((*PROXY_VARIABLES, "no_proxy", "NO_PROXY"))
    if proxy is not None:
        env.update(dict.fromkeys(PROXY_VARIABLES, proxy))
    env["TIKTOKEN_CACHE_DIR"] = str(tiktoken_cache)
    return Cli(folder, env=env, timeout=TIMEOUT)


@dataclass(frozen=True)
class Offline:
    """A tiny shakespeare config in `folder` and the offline CLI to run it with."""

    folder: Path
    cli: Cli
    tiktoken_cache: Path

    @property
    def config(self) -> Path:
        return self.folder / "tiny.toml"

    def arguments(self, verb: str) -> tuple[str, ...]:
        return (verb, "shakespeare", "--exp-config", str(self.config))

    def run(self, verb: str) -> subprocess.CompletedProcess[str]:
        return self.cli.run(*self.arguments(verb))


def offline_setup(
    folder: Path,
    changes: Mapping[str, TomlValue] | None = None,
    *,
    proxy: str | None = BLOCKED_PROXY,
) -> Offline:
    """A tiny shakespeare config in `folder` (written unless `changes` is None and one is
    there) and the offline environment, with an empty tiktoken cache of its own."""
    cache = folder / "empty-tiktoken-cache"
    cache.mkdir(parents=True, exist_ok=True)
    if changes is not None or not (folder / "tiny.toml").exists():
        write_toml(folder / "tiny.toml", {**TINY_SHAKESPEARE_RUN, **(changes or {})})
    return Offline(folder, offline_cli(folder, cache, proxy=proxy), cache)


@dataclass(frozen=True)
class FirstRun:
    offline: Offline
    prepared: subprocess.CompletedProcess[str]
    looped: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """`prepare`, then `loop`, of a fresh shakespeare experiment with the network blocked."""
    offline = offline_setup(tmp_path_factory.mktemp("first-run").resolve())
    prepared = offline.run("prepare")
    looped = offline.run("loop")
    return FirstRun(offline, prepared, looped)


@pytest.fixture
def trained(first_run: FirstRun, tmp_path: Path) -> Offline:
    """A copy of the first run's trained experiment, so each test sees only its own samples."""
    assert first_run.looped.returncode == 0, first_run.looped.stderr
    folder = tmp_path.resolve() / "trained"
    shutil.copytree(
        first_run.offline.folder, folder, ignore=shutil.ignore_patterns("datasets", "samples")
    )
    # The config's paths are relative, so the copy samples in its own folder.
    return offline_setup(folder)


def saved_samples(folder: Path) -> list[str]:
    """The samples saved in out/samples, in the order they were drawn."""
    return [
        path.read_text(encoding="utf-8")
        for path in sorted((folder / "out" / "samples").glob("*.txt"))
    ]


@pytest.mark.skipif(not SHARED_SHAKESPEARE.is_file(), reason="needs ../shared/data")
def test_prepare_offline_tokenizes_the_bundled_text_with_the_bundled_gpt2_ranks(
    first_run: FirstRun,
) -> None:
    offline, result = first_run.offline, first_run.prepared
    assert result.returncode == 0, result.stderr
    datasets = offline.folder / "datasets"
    assert "using the bundled Tiny Shakespeare" in result.stdout
    assert not (datasets / "input.txt").exists()  # read in place, not copied
    meta = json.loads((datasets / "meta.json").read_text(encoding="utf-8"))
    assert [entry["path"] for entry in meta["fingerprint"]["inputs"]] == [str(TINY_SHAKESPEARE)]
    assert meta["tokenizer"] == {"kind": "tiktoken", "encoding": "gpt2", "vocab": None}
    # The bundled text is Tiny Shakespeare, and its tokens are r50k_base's (read here from
    # the shared cache the test suite uses) for all of it, train then validation.
    text = SHARED_SHAKESPEARE.read_bytes()
    assert meta["fingerprint"]["content_sha256"] == hashlib.sha256(text).hexdigest()
    tokens = np.concatenate(
        [np.fromfile(datasets / name, dtype=np.uint16) for name in ("train.bin", "val.bin")]
    )
    expected = tiktoken.get_encoding("r50k_base").encode_ordinary(text.decode("utf-8"))
    assert tokens.tolist() == expected
    assert list(offline.tiktoken_cache.iterdir()) == []  # nothing was downloaded


def test_loop_offline_trains_and_prints_samples_with_no_download(first_run: FirstRun) -> None:
    offline, result = first_run.offline, first_run.looped

    assert result.returncode == 0, result.stderr
    assert f"dataset up to date: {offline.folder / 'datasets'}" in result.stdout
    out_dir = offline.folder / "out"
    assert checkpoint.load(out_dir / run_folder.LAST_FILE).state.iter_num == 4
    samples = saved_samples(offline.folder)
    assert len(samples) == NUM_SAMPLES
    assert all(sample.startswith("ROMEO:") for sample in samples)
    assert result.stdout.endswith("\n\n".join(samples) + "\n")
    assert list(offline.tiktoken_cache.iterdir()) == []


def test_sample_redirected_to_a_file_writes_only_the_samples_there(
    trained: Offline, tmp_path: Path
) -> None:
    text_file = tmp_path / "out.txt"

    with text_file.open("w", encoding="utf-8") as stdout:
        result = trained.cli.run(*trained.arguments("sample"), stdout=stdout)

    assert result.returncode == 0, result.stderr
    samples = saved_samples(trained.folder)
    assert text_file.read_text(encoding="utf-8") == "\n\n".join(samples) + "\n"
    assert f"sampling from {trained.folder / 'out' / run_folder.BEST_FILE}" in result.stderr
    assert result.stderr.count("--- saved ") == NUM_SAMPLES


def test_sample_into_a_pipe_nobody_reads_ends_quietly_and_saves_every_sample(
    trained: Offline,
) -> None:
    result = trained.cli.run_with_reader_gone(*trained.arguments("sample"))

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr
    assert len(saved_samples(trained.folder)) == NUM_SAMPLES


def test_sample_piped_into_head_shows_the_first_line_and_ends_quietly(trained: Offline) -> None:
    result = trained.cli.run_piped_into("head -1", *trained.arguments("sample"))

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    first_sample = saved_samples(trained.folder)[0]
    assert result.stdout == first_sample.split("\n", 1)[0] + "\n"


def test_a_verb_whose_reader_has_gone_exits_141_without_a_word(tmp_path: Path) -> None:
    result = offline_cli(tmp_path, tmp_path, proxy=BLOCKED_PROXY).run_with_reader_gone("list")

    assert result.returncode == EXIT_BROKEN_PIPE
    assert result.stderr == ""


def test_a_download_url_whose_host_does_not_resolve_is_one_error_line_after_one_attempt(
    tmp_path: Path,
) -> None:
    # No proxy here: the host name is looked up on this machine, and .invalid never
    # resolves (RFC 6761), just as no name does without a network.
    url = "http://ml-playground-test.invalid/input.txt"
    offline = offline_setup(tmp_path.resolve(), {"prepare.download_url": url}, proxy=None)

    result = offline.run("prepare")

    line = assert_one_error_line(result)
    target = offline.folder / "datasets" / "input.txt"
    assert f"download of {url} failed after 1 attempt(s) (host name not resolved" in line
    assert line.endswith(f"download it yourself and place it at {target}")
    assert target.parent.is_dir()  # so the instruction works as written
    assert f"downloading {url} to {target}" in result.stdout
