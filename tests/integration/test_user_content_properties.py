"""Whatever a user puts in, every verb ends in exit 0 or in one `error:` line with exit 2.

Property tests (hypothesis) over the content a user controls: TOML values, a chat template,
JSONL records, token files, the bytes of a prompt and of a Readme. Each example runs the
real CLI in-process (`cli.main`) on a fresh copy of a small experiment and asserts: the
call returns (an exception out of it is the traceback a user would see), the exit code is
0 or 2, a 2 comes with exactly one `error:` line and it is the last thing on stderr, and
every file present before a failed run is byte-identical after it. The example counts are
small and fixed (`derandomize`), so the suite's time is bounded by examples, not by a clock.
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ml_playground import cli
from ml_playground.data.dataset_meta import read_meta
from ml_playground.model.config import GPTConfig
from tests.experiments import char_gpt, chat_settings
from tests.export_helpers import random_gpt, save_checkpoint
from tests.finetune_helpers import (
    QWEN2_TEMPLATE,
    TinyModels,
    build_chat_model,
    conversation,
    write_jsonl,
)
from tests.toml_helpers import Settings, TomlScalar, TomlValue, write_toml

EXIT_OK, EXIT_USER_ERROR = 0, 2

Snapshot = dict[str, bytes]


def examples(count: int) -> settings:
    """`count` examples, the same ones every run, nothing stored in the source tree."""
    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def snapshot(folder: Path) -> Snapshot:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


_fresh = itertools.count()


def fresh_copy(base: Path, parent: Path) -> Path:
    target = parent / f"example-{next(_fresh)}" / base.name
    shutil.copytree(base, target)
    return target


def ends_cleanly(
    argv: Sequence[str], folder: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run the CLI; the exit code is 0 or one error line with 2, and a failed run leaves
    every file that was there as it was. Returns the code, stdout and stderr."""
    capsys.readouterr()
    before = snapshot(folder)
    code = cli.main(list(argv))  # anything it raises is a traceback the user would see
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert code in (EXIT_OK, EXIT_USER_ERROR), err
    # What the examples reached, in --hypothesis-show-statistics: the exit, the error's start.
    event(f"exit {code}" + "".join(f": {line[:40]}" for line in err.splitlines()[-1:] if code))
    if code == EXIT_USER_ERROR:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err
        assert err.rstrip("\n").splitlines()[-1] == errors[0], err
        after = snapshot(folder)
        changed = [name for name, data in before.items() if after.get(name) != data]
        assert changed == [], f"{changed} changed by a failed {argv[0]}: {errors[0]}"
    return code, out, err


# --- a small GPT experiment: prepared, with a random checkpoint fitted to its tokenizer ------

GPT_CHANGES: Mapping[str, TomlValue] = {
    "prepare.source": "text",
    "train.runtime.max_iters": 2,
    "train.runtime.eval_interval": 1,
    "train.runtime.eval_iters": 1,
    "train.data.batch_size": 2,
    "sample.sample.max_new_tokens": 6,
}


@pytest.fixture(scope="module")
def gpt_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt") / "exp"
    char_gpt(folder, GPT_CHANGES, corpus_chars=4_000)
    assert cli.main(["prepare", str(folder)]) == EXIT_OK
    meta = read_meta(folder / "datasets" / "meta.json")
    spec = meta.tokenizer_spec
    assert spec is not None
    args = GPTConfig(vocab_size=meta.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    save_checkpoint(folder / "out", random_gpt(args), spec)
    return folder


# --- TOML values ------------------------------------------------------------------------------

TOML_KEYS = (
    "prepare.train_split",
    "prepare.tokenizer",
    "prepare.raw_text_path",
    "prepare.encoding",
    "sample.sample.temperature",
    "sample.sample.top_k",
    "sample.sample.top_p",
    "sample.sample.start",
    "sample.sample.stream",
    "sample.runtime.seed",
    "train.runtime.device",
    "train.runtime.dtype",
    "train.runtime.out_dir",
    "train.data.dataset_dir",
    "train.model.n_head",
    "export.ollama.enabled",
    "prepare.no_such_key",
)
# Values as a user could type them; tomli_w (toml_helpers) spells them as TOML text.
TOML_SCALARS: st.SearchStrategy[TomlScalar] = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["cpu", "cuda", "float16", "char", "FILE:nowhere.txt", "."]),
)
TOML_VALUES: st.SearchStrategy[TomlValue | Settings] = st.one_of(
    TOML_SCALARS,
    st.lists(TOML_SCALARS, max_size=3),
    TOML_SCALARS.map(lambda value: {"a": value}),
)


def with_value(config: Path, key: str, value: TomlValue | Settings) -> None:
    """Rewrite config.toml with `key` set to `value`, the rest as it was, as a user edits it."""
    write_toml(config, {**tomllib.loads(config.read_text(encoding="utf-8")), key: value})


@examples(14)
@given(
    key=st.sampled_from(TOML_KEYS), value=TOML_VALUES, verb=st.sampled_from(["prepare", "sample"])
)
def test_any_toml_value_is_a_run_or_one_error_line(
    gpt_experiment: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    key: str,
    value: TomlValue | Settings,
    verb: str,
) -> None:
    folder = fresh_copy(gpt_experiment, tmp_path)
    with_value(folder / "config.toml", key, value)

    ends_cleanly([verb, str(folder)], folder, capsys)


@examples(6)
@given(text=st.text(max_size=60))
def test_any_config_text_is_a_run_or_one_error_line(
    gpt_experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    folder = fresh_copy(gpt_experiment, tmp_path)
    (folder / "config.toml").write_bytes(text.encode("utf-8", "surrogatepass"))

    ends_cleanly(["sample", str(folder)], folder, capsys)


# --- token files ------------------------------------------------------------------------------


@examples(12)
@given(
    data=st.binary(max_size=300),
    name=st.sampled_from(["val.bin", "train.bin"]),
    verb=st.sampled_from(["eval", "train", "inspect"]),
)
def test_any_token_file_is_a_run_or_one_error_line(
    gpt_experiment: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    data: bytes,
    name: str,
    verb: str,
) -> None:
    folder = fresh_copy(gpt_experiment, tmp_path)
    (folder / "datasets" / name).write_bytes(data)

    ends_cleanly([verb, str(folder)], folder, capsys)


# --- the bytes of a prompt ----------------------------------------------------------------------


@examples(10)
@given(data=st.binary(max_size=40), errors=st.sampled_from(["strict", "surrogateescape"]))
def test_any_bytes_piped_into_chat_are_replies_or_one_error_line(
    gpt_experiment: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    data: bytes,
    errors: str,
) -> None:
    folder = fresh_copy(gpt_experiment, tmp_path)
    # As Python sets up stdin: UTF-8 strict, or surrogateescape under a C or POSIX locale.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), "utf-8", errors))

    code, _, err = ends_cleanly(["chat", str(folder)], folder, capsys)

    if code == EXIT_USER_ERROR and not _is_utf8(data):
        assert "the input is not UTF-8" in err


@examples(8)
@given(data=st.binary(max_size=40))
def test_any_bytes_as_a_sample_prompt_file_are_samples_or_one_error_line(
    gpt_experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    folder = fresh_copy(gpt_experiment, tmp_path)
    (folder / "prompt.txt").write_bytes(data)
    with_value(folder / "config.toml", "sample.sample.start", "FILE:prompt.txt")

    ends_cleanly(["sample", str(folder)], folder, capsys)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- a Readme ----------------------------------------------------------------------------------


@examples(6)
@given(data=st.binary(max_size=60))
def test_list_shows_every_experiment_whatever_a_readme_holds(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    data: bytes,
) -> None:
    root = tmp_path / f"experiments-{next(_fresh)}"
    for name in ("broken", "fine"):
        (root / name).mkdir(parents=True)
        write_toml(root / name / "config.toml", {})
    (root / "broken" / "Readme.md").write_bytes(data)
    (root / "fine" / "Readme.md").write_text("# fine\n\nA fine experiment.\n", encoding="utf-8")
    monkeypatch.setenv("ML_PLAYGROUND_EXPERIMENTS", str(root))

    code, out, _ = ends_cleanly(["list"], root, capsys)

    assert code == EXIT_OK
    assert "broken" in out and "A fine experiment." in out
    if not _is_utf8(data):
        assert "(Readme.md is not UTF-8; convert it to UTF-8)" in out


# --- chat templates and JSONL records (a tiny Hugging Face tokenizer) ------------------------

TEMPLATE_PIECES = (
    QWEN2_TEMPLATE,
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    "{% if add_generation_prompt %}assistant:{% endif %}",
    "{{ messages[0].content }}",
    "{{ messages[0].content + 1 }}",
    "{{ 1 / 0 }}",
    "{{ messages[9].content }}",
    "{{ raise_exception('no such turn') }}",
    "{{ none.attribute }}",
    "{{ '%d' % 'x' }}",
    "{{ messages | length // 0 }}",
    "{{ [1][3] }}",
    "{{ messages[0]['content'][200] }}",
    "{{ (messages | first).content.upper() }}",
    "{% generation %}{{ messages[-1].content }}{% endgeneration %}",
    "{{ eos_token }}",
    "{% for m in messages %}{{ m.content | int // 0 }}{% endfor %}",
    "{{ messages[0].content.split(1) }}",
    "{% if messages[0].role == 'user' %}",
)


@pytest.fixture(scope="module")
def chat_experiment(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Path:
    """A chat records experiment (the built-in records source), prepared once."""
    folder = tmp_path_factory.mktemp("chat") / "exp"
    model = build_chat_model(folder.parent / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    write_jsonl(
        folder / "chats.jsonl", [conversation(f"Frage {i}?", f"Antwort {i}.") for i in range(4)]
    )
    write_toml(folder / "config.toml", chat_settings(model) | {"prepare.source": "records"})
    assert cli.main(["prepare", str(folder)]) == EXIT_OK
    return folder


@examples(12)
@given(
    pieces=st.lists(st.sampled_from(TEMPLATE_PIECES), min_size=1, max_size=3),
    text=st.text(max_size=8),
)
def test_any_chat_template_prepares_or_is_one_error_line(
    chat_experiment: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    pieces: list[str],
    text: str,
) -> None:
    folder = fresh_copy(chat_experiment, tmp_path)
    (folder / "chat.jinja").write_text(text.join(pieces), encoding="utf-8", errors="surrogatepass")
    with_value(folder / "config.toml", "prepare.chat_template", "FILE:chat.jinja")

    ends_cleanly(["prepare", str(folder)], folder, capsys)


JSON_KEYS = ("role", "content", "messages", "text", "prompt", "completion")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["role", "content", "messages", "text", "x"]), children, max_size=3
        )
    ),
    max_leaves=8,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "robot"]), "content": JSON_VALUES}
)
RECORD_LINES = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.lists(MESSAGE, max_size=3).map(lambda messages: json.dumps({"messages": messages})),
    st.binary(max_size=20).map(lambda raw: raw.decode("latin-1")),
)


@examples(12)
@given(
    lines=st.lists(RECORD_LINES, max_size=5),
    source_format=st.sampled_from(["messages", "prompt_completion", "text"]),
    raw=st.binary(max_size=8),
)
def test_any_jsonl_records_prepare_or_are_one_error_line(
    chat_experiment: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    lines: list[str],
    source_format: str,
    raw: bytes,
) -> None:
    folder = fresh_copy(chat_experiment, tmp_path)
    good = [json.dumps(conversation("Wer?", "Ich.")) for _ in range(2)]
    body = "\n".join([*good, *lines]).encode("utf-8", "surrogatepass") + b"\n" + raw
    (folder / "chats.jsonl").write_bytes(body)
    with_value(folder / "config.toml", "prepare.format", source_format)

    ends_cleanly(["prepare", str(folder)], folder, capsys)
