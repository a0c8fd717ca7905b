"""A loopback fake of the Hugging Face Hub: huggingface_hub's real client code talks to it.

    hub = FakeHub()                       # or the `fake_hub` fixture (below; tests/conftest.py has it)
    hub.add_repo("org/name", {"config.json": b"{}", "model.safetensors": data}, gated=True)
    hub.start()                           # serves on 127.0.0.1; hub.url is the endpoint
    ... HF_ENDPOINT=hub.url, HF_HUB_OFFLINE off (the fixture does both) ...
    hub.stop()

Served (what snapshot_download / hf_hub_download / HfApi.model_info / list_models call):

    GET  /api/models/{repo}[/revision/{rev}]        repo info: id, sha, siblings (with sizes)
    GET  /api/models/{repo}/tree/{rev}[/{path}]      the file listing (recursive)
    HEAD /{repo}/resolve/{rev}/{path}                file metadata: X-Repo-Commit, ETag, size
    GET  /{repo}/resolve/{rev}/{path}                the bytes (Range requests for resuming)
    GET  /api/models?search=...                      list_models (id, downloads, tags, ...)

Datasets (`add_repo(..., repo_type="dataset")`, kept in `hub.datasets`) answer the same under
/api/datasets/... and /datasets/{repo}/resolve/... (dataset_info, list_datasets, downloads).

Access: a `private` repo answers 401 RepoNotFound without a valid token; a `gated` one answers
401 GatedRepo without a token and 403 GatedRepo for a token not in `allowed_tokens`; an unknown
repo answers 404 RepoNotFound (the headers huggingface_hub turns into its typed errors).
Faults: `bytes_per_second` slows downloads (progress, cancel), `cut_after` closes the connection
after that many bytes of a file (an interrupted download, to resume), `requests` records
(method, path, Range header) of every request.

Fixtures: `fake_hub` (a started FakeHub, HF_ENDPOINT and huggingface_hub pointed at it, online,
an empty cache) and `hf_cache` (an empty cache, offline); `fill_cache` pre-fills a cache folder.

Extending (uploads, other endpoints): append `(method, regex, handler)` to `hub.routes`; a
handler gets (request_handler, match) and writes the whole response itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest


_TYPE = r"(?:models|(?P<datasets>datasets))"  # /api/models/... or /api/datasets/...
_PREFIX = r"(?:(?P<datasets>datasets)/)?"      # /org/name/resolve/... or /datasets/org/name/resolve/...


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    sha: str
    revisions: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha
    gated: bool = False
    private: bool = False
    allowed_tokens: set = field(default_factory=set)
    info: dict = field(default_factory=dict)  # extra model-info fields (tags, downloads, ...)


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.datasets: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.bytes_per_second: float | None = None
        self.cut_after: int | None = None
        self.routes = [
            ("GET", re.compile(rf"^/api/{_TYPE}$"), self._list_models),
            ("GET", re.compile(rf"^/api/{_TYPE}/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
             self._tree),
            ("GET", re.compile(rf"^/api/{_TYPE}/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$"), self._info),
            ("HEAD", re.compile(rf"^/{_PREFIX}(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), self._file),
            ("GET", re.compile(rf"^/{_PREFIX}(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), self._file),
        ]
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ setup

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, gated=False, private=False,
                 allowed_tokens=(), revisions=None, repo_type="model", **info) -> FakeRepo:
        sha = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        repo = FakeRepo(repo_id, dict(files), sha, {"main": sha, **(revisions or {})}, gated, private,
                        set(allowed_tokens), info)
        (self.datasets if repo_type == "dataset" else self.repos)[repo_id] = repo
        return repo

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                hub._dispatch(self, "GET")

            def do_HEAD(self):
                hub._dispatch(self, "HEAD")

            def do_POST(self):
                hub._dispatch(self, "POST")

            def do_PUT(self):
                hub._dispatch(self, "PUT")

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ serving

    def _dispatch(self, handler, method: str) -> None:
        url = urlparse(handler.path)
        self.requests.append((method, url.path, handler.headers.get("Range")))
        for route_method, pattern, function in self.routes:
            match = pattern.match(unquote(url.path)) if route_method == method else None
            if match:
                function(handler, match)
                return
        self._send(handler, 404, {"error": "no such endpoint"})

    @staticmethod
    def _send(handler, status: int, body=None, headers=None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def _error(self, handler, status: int, code: str, message: str) -> None:
        self._send(handler, status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _store(self, match) -> dict[str, FakeRepo]:
        return self.datasets if match.groupdict().get("datasets") else self.repos

    def _repo(self, handler, match) -> tuple[FakeRepo, str] | None:
        """The repo and the commit sha asked for, or None after answering with the error."""
        repo = self._store(match).get(match.group("repo"))
        token = (handler.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if repo is None or (repo.private and token not in repo.allowed_tokens):
            status = 401 if repo is not None or not token else 404
            self._error(handler, status, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and token not in repo.allowed_tokens:
            self._error(handler, 401 if not token else 403, "GatedRepo",
                        "Access to this model is restricted: accept its conditions first.")
            return None
        rev = match.groupdict().get("rev") or "main"
        sha = repo.revisions.get(rev, rev if rev == repo.sha else None)
        if sha is None:
            self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, sha

    def _info(self, handler, match) -> None:
        found = self._repo(handler, match)
        if found:
            repo, sha = found
            self._send(handler, 200, {
                "id": repo.repo_id, "modelId": repo.repo_id, "sha": sha, "private": repo.private,
                "gated": "manual" if repo.gated else False, "downloads": 0, "likes": 0, "tags": [],
                "siblings": [{"rfilename": p, "size": len(d)} for p, d in sorted(repo.files.items())],
                **repo.info})

    def _tree(self, handler, match) -> None:
        found = self._repo(handler, match)
        if found:
            repo, _ = found
            prefix = match.group("path") or ""
            self._send(handler, 200, [
                {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest(),
                 "lfs": {"oid": _etag(d), "size": len(d), "pointerSize": 130}}
                for p, d in sorted(repo.files.items()) if p.startswith(prefix)])

    def _file(self, handler, match) -> None:
        found = self._repo(handler, match)
        if not found:
            return
        repo, sha = found
        data = repo.files.get(match.group("path"))
        if data is None:
            self._error(handler, 404, "EntryNotFound", "Entry not found")
            return
        start = 0
        ranged = re.match(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if ranged and handler.command == "GET":
            start = int(ranged.group(1))
        handler.send_response(206 if start else 200)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{_etag(data)}"', "X-Linked-Etag": f'"{_etag(data)}"',
                   "X-Linked-Size": str(len(data)), "Content-Length": str(len(data) - start),
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        if handler.command == "HEAD":
            return
        self._stream(handler, data[start:])

    def _stream(self, handler, data: bytes) -> None:
        chunk = 16384
        for i in range(0, len(data), chunk):
            if self.cut_after is not None and i >= self.cut_after:
                handler.close_connection = True
                handler.connection.shutdown(2)  # an interrupted download
                return
            handler.wfile.write(data[i:i + chunk])
            if self.bytes_per_second:
                time.sleep(chunk / self.bytes_per_second)

    def _list_models(self, handler, match) -> None:
        query = parse_qs(urlparse(handler.path).query)
        search = (query.get("search") or [""])[0].lower()
        found = [r for r in self._store(match).values() if search in r.repo_id.lower() and not r.private]
        found.sort(key=lambda r: -r.info.get("downloads", 0))
        self._send(handler, 200, [
            {"id": r.repo_id, "modelId": r.repo_id, "sha": r.sha, "private": False,
             "gated": "manual" if r.gated else False, "downloads": 0, "likes": 0, "tags": [],
             **r.info} for r in found])


def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes], *, sha: str = "a" * 40,
               ref: str | None = "main", repo_type: str = "model") -> Path:
    """Write `files` into `cache` in huggingface_hub's layout (blobs, snapshots/<sha> links,
    refs/<ref>), as a finished download leaves them; returns the snapshot folder."""
    repo = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    for name, data in files.items():
        blob = repo / "blobs" / _etag(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache folder that huggingface_hub (and we) use; offline as tests are."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache


@pytest.fixture
def fake_hub(hf_cache, monkeypatch):
    """A running FakeHub that huggingface_hub talks to (HF_ENDPOINT), online, with an empty cache."""
    import huggingface_hub.constants as constants

    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 65536)  # progress (and cancel) every 64 KiB, not 10 MB
    hub.cache = hf_cache
    yield hub
    hub.stop()
