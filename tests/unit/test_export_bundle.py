"""The export folder as a unit: staged and swapped whole, checksummed, stamped, guarded."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from ml_playground.errors import ExportError
from ml_playground.export import bundle

INPUTS: dict[str, object] = {"route": "test", "checkpoint": {"sha256": "abc"}, "quant": "f16"}


def export_once(export_dir: Path, inputs: Mapping[str, object], content: bytes = b"gguf") -> None:
    with bundle.staged(export_dir) as staging:
        (staging / "model.gguf").write_bytes(content)
        (staging / "Modelfile").write_text("FROM ./model.gguf\n", encoding="utf-8")
        bundle.seal(staging, inputs)


def test_a_sealed_bundle_is_up_to_date_for_the_same_inputs_only(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_once(export_dir, INPUTS)

    assert bundle.up_to_date(export_dir, dict(INPUTS))
    assert not bundle.up_to_date(export_dir, INPUTS | {"quant": "q8_0"})
    assert sorted(path.name for path in export_dir.iterdir()) == [
        "Modelfile",
        bundle.CHECKSUMS,
        bundle.STAMP,
        "model.gguf",
    ]


def test_a_damaged_or_incomplete_bundle_is_not_up_to_date(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_once(export_dir, INPUTS)

    (export_dir / "model.gguf").write_bytes(b"truncated")
    assert not bundle.up_to_date(export_dir, INPUTS)
    (export_dir / "model.gguf").unlink()
    assert not bundle.up_to_date(export_dir, INPUTS)


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_checksums_verify_with_sha256sum(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_once(export_dir, INPUTS)

    result = subprocess.run(
        ["sha256sum", "-c", bundle.CHECKSUMS],
        cwd=export_dir,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "model.gguf: OK" in result.stdout


def test_an_interrupted_export_keeps_the_previous_bundle_whole(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_once(export_dir, INPUTS, content=b"first")

    with pytest.raises(RuntimeError), bundle.staged(export_dir) as staging:
        (staging / "model.gguf").write_bytes(b"half")
        raise RuntimeError("converter crashed")

    assert (export_dir / "model.gguf").read_bytes() == b"first"
    assert bundle.up_to_date(export_dir, INPUTS)
    assert [path.name for path in tmp_path.iterdir()] == ["export"]  # no staging left


def test_a_folder_with_foreign_files_is_not_replaced(tmp_path: Path) -> None:
    export_dir = tmp_path / "mine"
    export_dir.mkdir()
    (export_dir / "notes.txt").write_text("precious", encoding="utf-8")

    with (
        pytest.raises(ExportError, match="holds files that no export wrote"),
        bundle.staged(export_dir),
    ):
        pass

    assert (export_dir / "notes.txt").read_text(encoding="utf-8") == "precious"


def test_an_unwritable_export_dir_fails_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")

    with (
        pytest.raises(ExportError, match="cannot write export_dir"),
        bundle.staged(blocker / "export"),
    ):
        pass


def test_a_bundle_nested_in_export_dir_survives_replacing_it(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_once(export_dir / "hf", {"route": "nested"}, content=b"weights")
    export_once(export_dir, INPUTS, content=b"first")  # a folder holding only bundles is ours
    nested = {path.name: path.read_bytes() for path in (export_dir / "hf").iterdir()}

    export_once(export_dir, {**INPUTS, "quant": "q8_0"}, content=b"second")

    assert (export_dir / "model.gguf").read_bytes() == b"second"
    assert {path.name: path.read_bytes() for path in (export_dir / "hf").iterdir()} == nested
    assert bundle.up_to_date(export_dir / "hf", {"route": "nested"})
    checksums = (export_dir / bundle.CHECKSUMS).read_text(encoding="utf-8")
    assert "hf/" not in checksums  # the nested bundle is its own, not part of this one


def test_a_foreign_file_beside_a_nested_bundle_still_refuses(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_once(export_dir / "hf", {"route": "nested"})
    (export_dir / "notes.txt").write_text("precious", encoding="utf-8")

    with (
        pytest.raises(ExportError, match=r"choose an empty or new folder for \[export.hf\]"),
        bundle.staged(export_dir, "[export.hf] export_dir"),
    ):
        pass

    assert (export_dir / "notes.txt").read_text(encoding="utf-8") == "precious"
