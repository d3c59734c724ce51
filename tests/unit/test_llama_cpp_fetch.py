"""tools/llama_cpp/fetch.py on a small stand-in of llama-cpp-python's sdist (no network).

The archive has the sdist's layout (`llama_cpp_python-<version>/vendor/llama.cpp/...`) and
is served from a file:// URL, so the download, the hash check, the extraction and the
stamp run as they do against PyPI.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from tools.llama_cpp import fetch

FILES = {
    "convert_hf_to_gguf.py": "print('converter')\n",
    "convert_lora_to_gguf.py": "print('lora converter')\n",
    "LICENSE": "MIT\n",
    "conversion/__init__.py": "",
    "conversion/llama.py": "# a model\n",
    "gguf-py/gguf/__init__.py": "",
    "src/llama.cpp": "// C++ the converters do not need\n",
}


def sdist(path: Path, files: dict[str, str]) -> tuple[str, str]:
    """A tar.gz at `path` with `files` under the vendored llama.cpp; its URL and sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{fetch.LLAMA_CPP}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_converters_and_their_packages_are_extracted_with_a_stamp(tmp_path: Path) -> None:
    url, sha256 = sdist(tmp_path / "llama_cpp_python.tar.gz", FILES)
    tools = tmp_path / "tools"
    tools.mkdir()

    archive = fetch.cached_archive(tmp_path / "cache", url, sha256)
    assert fetch.install_converters(archive, tools, sha256)

    assert archive.parent == tmp_path / "cache"
    extracted = sorted(p.relative_to(tools).as_posix() for p in tools.rglob("*") if p.is_file())
    assert extracted == sorted(
        [*(name for name in FILES if not name.startswith("src/")), ".llama-cpp-version"]
    )
    assert (tools / "conversion" / "llama.py").read_text(encoding="utf-8") == "# a model\n"
    assert fetch.VERSION in (tools / fetch.STAMP).read_text(encoding="utf-8")
    # A second run finds the stamp and changes nothing.
    (tools / "convert_hf_to_gguf.py").write_text("edited\n", encoding="utf-8")
    assert not fetch.install_converters(archive, tools, sha256)
    assert (tools / "convert_hf_to_gguf.py").read_text(encoding="utf-8") == "edited\n"


def test_an_archive_with_another_hash_is_refused_and_not_cached(tmp_path: Path) -> None:
    url, sha256 = sdist(tmp_path / "llama_cpp_python.tar.gz", FILES)

    with pytest.raises(fetch.FetchError, match=rf"has sha256 {sha256}, not the pinned 0+"):
        fetch.cached_archive(tmp_path / "cache", url, "0" * 64)

    assert list((tmp_path / "cache").iterdir()) == []


def test_the_command_reports_a_failed_download_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "URL", (tmp_path / "missing.tar.gz").as_uri())
    monkeypatch.setattr(fetch, "HERE", tmp_path / "tools")

    assert fetch.main(["converters"]) == 2

    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: cannot download {(tmp_path / 'missing.tar.gz').as_uri()}")
