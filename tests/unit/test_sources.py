"""Raw text sources: .txt discovery, and downloads from a local HTTP server (never the internet)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ml_playground.data.sources import download, text_files
from ml_playground.errors import DataError

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")


@dataclass
class LocalServer:
    """Serves queued (status, body) replies per path and counts the requests."""

    url: str
    replies: dict[str, list[tuple[int, bytes]]] = field(
        default_factory=dict[str, list[tuple[int, bytes]]]
    )
    requests: dict[str, int] = field(default_factory=dict[str, int])


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests go straight to their host: a proxy from the environment sees none of them."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(direct: None) -> Iterator[LocalServer]:
    state = LocalServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests[self.path] = state.requests.get(self.path, 0) + 1
            queue = state.replies.get(self.path) or [(404, b"")]
            # Replies are used in order; the last one answers every further request.
            status, body = queue.pop(0) if len(queue) > 1 else queue[0]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output quiet

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval lets shutdown() return quickly after each test.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_text_files_finds_txt_files_recursively_in_sorted_order(tmp_path: Path) -> None:
    for relative in ("b.txt", "a/z.txt", "a/b/c.txt", "notes.md", "a/data.csv"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x", encoding="utf-8")

    found = text_files(tmp_path)

    assert [path.relative_to(tmp_path).as_posix() for path in found] == [
        "a/b/c.txt",
        "a/z.txt",
        "b.txt",
    ]


def test_text_files_without_any_txt_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("x", encoding="utf-8")

    with pytest.raises(DataError, match=rf"no \.txt files found under {tmp_path}"):
        text_files(tmp_path)


def test_text_files_of_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"raw text folder not found: {tmp_path / 'raw'}"):
        text_files(tmp_path / "raw")


def test_download_writes_the_file_and_leaves_no_temporary_behind(
    server: LocalServer, tmp_path: Path
) -> None:
    body = "Größe 🍎\n".encode() * 1000
    server.replies["/input.txt"] = [(200, body)]
    dest = tmp_path / "data" / "input.txt"

    download(f"{server.url}/input.txt", dest)

    assert dest.read_bytes() == body
    assert [path.name for path in dest.parent.iterdir()] == ["input.txt"]


def test_download_of_a_missing_file_says_where_to_place_it_without_retrying(
    server: LocalServer, tmp_path: Path
) -> None:
    dest = tmp_path / "input.txt"

    with pytest.raises(DataError) as caught:
        download(f"{server.url}/missing.txt", dest, retries=3)

    message = str(caught.value)
    assert "HTTP 404" in message
    assert f"place it at {dest}" in message
    assert "\n" not in message
    assert server.requests["/missing.txt"] == 1
    assert not dest.exists()


def test_download_retries_server_errors_until_it_succeeds(
    server: LocalServer, tmp_path: Path
) -> None:
    server.replies["/flaky.txt"] = [(503, b""), (500, b""), (200, b"finally\n")]
    dest = tmp_path / "flaky.txt"

    download(f"{server.url}/flaky.txt", dest, retries=2, backoff_seconds=0.0)

    assert dest.read_bytes() == b"finally\n"
    assert server.requests["/flaky.txt"] == 3


def test_download_gives_up_after_its_retries(server: LocalServer, tmp_path: Path) -> None:
    server.replies["/down.txt"] = [(503, b"")]

    with pytest.raises(DataError, match=r"failed after 3 attempt\(s\) \(HTTP 503"):
        download(f"{server.url}/down.txt", tmp_path / "down.txt", retries=2, backoff_seconds=0.0)

    assert server.requests["/down.txt"] == 3


def test_download_of_an_unreachable_host_says_where_to_place_the_file(tmp_path: Path) -> None:
    # Port 9 on the loopback interface is closed: the connection is refused at once.
    dest = tmp_path / "input.txt"

    with pytest.raises(DataError, match=rf"download it yourself and place it at {dest}"):
        download("http://127.0.0.1:9/input.txt", dest, retries=1, backoff_seconds=0.0)


def test_download_of_a_host_name_that_does_not_resolve_fails_after_one_attempt(
    direct: None, tmp_path: Path
) -> None:
    # .invalid never resolves (RFC 6761); with no proxy the name is looked up here, as on
    # a machine without network.
    dest = tmp_path / "datasets" / "input.txt"

    with pytest.raises(DataError) as caught:
        download("http://ml-playground-test.invalid/input.txt", dest, retries=3)

    message = str(caught.value)
    assert "failed after 1 attempt(s) (host name not resolved" in message
    assert f"download it yourself and place it at {dest}" in message
    assert dest.parent.is_dir()  # the instruction works as written
    assert not dest.exists()


def test_download_says_on_stdout_how_much_it_fetched_and_where(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = b"To be, or not to be\n" * 500
    server.replies["/input.txt"] = [(200, body)]
    dest = tmp_path / "input.txt"

    download(f"{server.url}/input.txt", dest)

    assert capsys.readouterr().out == f"downloaded {len(body):,} bytes to {dest}\n"


def test_download_refuses_urls_that_are_not_http(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only http and https URLs"):
        download("file:///etc/passwd", tmp_path / "passwd")
