"""Fetch llama.cpp's converters, and build llama-quantize, -completion and -bench, from one pin.

GitHub is not always reachable; PyPI is. llama-cpp-python's source distribution vendors a
whole llama.cpp tree (`vendor/llama.cpp/`), so one pinned, hash-checked archive gives the
converter scripts together with the gguf-py they were written for, and the C++ sources.

    uv run python tools/llama_cpp/fetch.py converters   # the Python converters: seconds
    uv run python tools/llama_cpp/fetch.py binaries     # llama-quantize, -completion, -bench: cmake

`make llama-cpp-converters` and `make llama-cpp` run these. Each step writes a stamp last
and is a no-op when its stamp names the pinned archive. The archive is cached under
$XDG_CACHE_HOME/ml-playground (default ~/.cache/ml-playground), the source tree and the
cmake build beside it; what the exporter runs lands in this folder (gitignored).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

VERSION = "0.3.36"
ARCHIVE = f"llama_cpp_python-{VERSION}.tar.gz"
# files.pythonhosted.org paths are content-addressed and never change; the hash is PyPI's.
URL = (
    "https://files.pythonhosted.org/packages/ec/e9/"
    f"e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/{ARCHIVE}"
)
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP = f"llama_cpp_python-{VERSION}/vendor/llama.cpp"

HERE = Path(__file__).resolve().parent
# The converters import `conversion` and put `gguf-py` first on sys.path, from their own folder.
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE")
CONVERTER_DIRS = ("conversion", "gguf-py")
STAMP = ".llama-cpp-version"
BIN_DIR = "bin"
# llama-cli is now the server's chat front end (it needs the server library and web UI
# assets fetched from the network); llama-completion is the classic one-shot generator;
# llama-bench times prompt processing and generation, for `make bench`'s decode rows.
TARGETS = ("llama-quantize", "llama-completion", "llama-bench")
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    # Static: the binaries are copied out of the build folder and must run on their own.
    "-DBUILD_SHARED_LIBS=OFF",
)
CHUNK = 1 << 20


class FetchError(Exception):
    """Something the user can fix; printed as one `error:` line, exit code 2."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ml-playground"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_archive(cache: Path, url: str, sha256: str) -> Path:
    """The pinned sdist in `cache`, downloaded once; a copy with another hash is replaced."""
    target = cache / url.rsplit("/", 1)[-1]
    if target.is_file() and sha256_of(target) == sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url}", file=sys.stderr)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise FetchError(f"cannot download {url}: {exc}; check the network or PyPI") from None
    actual = sha256_of(partial)
    if actual != sha256:
        partial.unlink()
        raise FetchError(f"{url} has sha256 {actual}, not the pinned {sha256}; refusing to use it")
    partial.replace(target)
    return target


def stamp_text(sha256: str = SHA256) -> str:
    return f"llama-cpp-python {VERSION} sha256 {sha256}\n"


def is_current(folder: Path, names: Sequence[str], sha256: str = SHA256) -> bool:
    stamp = folder / STAMP
    return (
        stamp.is_file()
        and stamp.read_text(encoding="utf-8") == stamp_text(sha256)
        and all((folder / name).exists() for name in names)
    )


def extract(
    archive: Path, target: Path, keep: Callable[[str], bool], prefix: str = LLAMA_CPP
) -> None:
    """The members below `prefix` whose relative path `keep` accepts, into `target`."""
    with tarfile.open(archive) as tar:
        members: list[tarfile.TarInfo] = []
        for member in tar.getmembers():
            relative = member.name.removeprefix(prefix + "/")
            if relative != member.name and keep(relative):
                member.name = relative
                members.append(member)
        if not members:
            raise FetchError(f"{archive} holds no {prefix}/; is it llama-cpp-python's sdist?")
        # The data filter refuses links and paths that would leave `target`.
        tar.extractall(target, members=members, filter="data")


def is_converter_part(relative: str) -> bool:
    return relative in CONVERTER_FILES or relative.split("/", 1)[0] in CONVERTER_DIRS


def install_converters(archive: Path, folder: Path, sha256: str = SHA256) -> bool:
    """The converters and their packages into `folder`; False when already there."""
    names = (*CONVERTER_FILES, *CONVERTER_DIRS)
    if is_current(folder, names, sha256):
        return False
    (folder / STAMP).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as staging:
        extract(archive, Path(staging), is_converter_part)
        for name in names:
            if not (Path(staging) / name).exists():
                raise FetchError(f"{archive} has no {LLAMA_CPP}/{name}")
            old = folder / name
            if old.is_dir():
                shutil.rmtree(old)
            (Path(staging) / name).replace(old)
    (folder / STAMP).write_text(stamp_text(sha256), encoding="utf-8")
    return True


def source_tree(archive: Path, cache: Path) -> Path:
    """llama.cpp's whole source tree, unpacked once into the cache."""
    source = cache / f"llama.cpp-{VERSION}"
    if is_current(source, ("CMakeLists.txt",)):
        return source
    if source.exists():
        shutil.rmtree(source)
    extract(archive, source, lambda _: True)
    (source / STAMP).write_text(stamp_text(), encoding="utf-8")
    return source


def build_binaries(source: Path, build: Path, bin_dir: Path) -> None:
    """cmake's Release build of TARGETS, copied into `bin_dir`, stamp last."""
    if shutil.which("cmake") is None:
        raise FetchError("cmake is not on PATH; install cmake and a C++ compiler, then retry")
    jobs = str(os.cpu_count() or 1)
    run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS])
    run(["cmake", "--build", str(build), "--config", "Release", "-j", jobs, "--target", *TARGETS])
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / STAMP).unlink(missing_ok=True)
    for name in TARGETS:
        built = build / "bin" / name
        if not built.is_file():
            raise FetchError(f"cmake finished but {built} is missing")
        partial = bin_dir / f".{name}.part"
        shutil.copy2(built, partial)
        partial.replace(bin_dir / name)
    (bin_dir / STAMP).write_text(stamp_text(), encoding="utf-8")


def run(command: list[str]) -> None:
    print("+ " + " ".join(command), file=sys.stderr)
    if subprocess.run(command, check=False).returncode != 0:
        raise FetchError(f"`{' '.join(command[:3])} ...` failed; its output is above")


def fetch_converters() -> None:
    if is_current(HERE, (*CONVERTER_FILES, *CONVERTER_DIRS)):
        print(f"llama.cpp converters {VERSION} already in {HERE}")
        return
    install_converters(cached_archive(cache_dir(), URL, SHA256), HERE)
    print(f"llama.cpp converters {VERSION} in {HERE}")


def fetch_binaries() -> None:
    bin_dir = HERE / BIN_DIR
    if is_current(bin_dir, TARGETS):
        print(f"llama.cpp binaries {VERSION} already in {bin_dir}")
        return
    cache = cache_dir()
    source = source_tree(cached_archive(cache, URL, SHA256), cache)
    build_binaries(source, cache / f"llama.cpp-{VERSION}-build", bin_dir)
    print(f"llama.cpp binaries {VERSION} in {bin_dir}: {', '.join(TARGETS)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("step", choices=("converters", "binaries"))
    step: str = parser.parse_args(argv).step
    try:
        if step == "converters":
            fetch_converters()
        else:
            fetch_binaries()
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
