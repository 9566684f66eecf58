"""A stand-in for the Hugging Face Hub's file endpoint on 127.0.0.1, recording every request's headers.

`hub_standin(repos, monkeypatch)` serves `{repo_id: folder}` (each folder's files at any revision) the way
`huggingface_hub.hf_hub_download` expects (`HEAD`/`GET /{repo_id}/resolve/{revision}/{filename}` with the
commit, ETag and size headers; 404s with the Hub's error codes) and points huggingface_hub at it, online, for
one test. The tests then assert on what the requests carried, e.g. no `Authorization` header.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

COMMIT = "5" * 40


@dataclass
class StandIn:
    """The running stand-in: its URL and the (method, path, headers) of every request, in order."""

    url: str
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def headers_for(self, repo_id: str) -> list[dict[str, str]]:
        """The headers of every request for files of `repo_id` (lower-case names)."""
        return [headers for _, path, headers in self.requests if path.startswith(f"/{repo_id}/resolve/")]


@contextlib.contextmanager
def hub_standin(repos: Mapping[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """Serve `repos` on a free loopback port and send huggingface_hub there (HF_ENDPOINT, online)."""
    import huggingface_hub.constants as hf_constants

    files = {
        repo_id: {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        for repo_id, folder in repos.items()
    }
    state = StandIn(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
            pass

        def _answer(self, body: bool) -> None:
            with lock:
                state.requests.append(
                    (self.command, unquote(self.path), {k.lower(): v for k, v in self.headers.items()})
                )
            repo_id, sep, rest = unquote(self.path).lstrip("/").partition("/resolve/")
            _, _, filename = rest.partition("/")
            if not sep or repo_id not in files:
                return self._error(401, "RepoNotFound")  # what the Hub says for missing and private
            data = files[repo_id].get(filename)
            if data is None:
                return self._error(404, "EntryNotFound")
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _error(self, status: int, code: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(body=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import: set what it derived from them.
    monkeypatch.setattr(hf_constants, "ENDPOINT", state.url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", state.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
