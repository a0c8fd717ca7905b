"""Uploads for the loopback fake Hub (tests/fake_hub.py): the endpoints `HfApi.create_repo` and
`HfApi.upload_folder` call, added through FakeHub's `routes` (its extension point).

    POST /api/repos/create                     {name, organization, visibility}: 200 {url}, 409 {url} if it exists
    POST /api/validate-yaml                    the README's front matter: always valid here
    POST /api/models/{repo}/preupload/{rev}    every file "regular" (sent inside the commit), with the
                                               git oid of what the repo already holds (unchanged files are skipped)
    POST /api/models/{repo}/commit/{rev}       NDJSON header + base64 files: the repo's files change

Who may write: `hub.writers` maps a token to the user name it logs in as; a user writes to their own
namespace and to those in `hub.orgs[user]`. No token or an unknown one answers 401, another namespace
403, with the headers huggingface_hub turns into its errors. `hub.commits` records (repo, summary,
[paths]) of every commit; the pushed files are then served like any other (downloads work).

Fixture: `fake_hub_upload` (the `fake_hub` fixture with uploads, user "alice" with token "hf_alice",
HF_TOKEN unset).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from tests.fake_hub import FakeHub


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Uploads:
    def __init__(self, hub: FakeHub):
        self.hub = hub
        hub.writers, hub.orgs, hub.commits = {}, {}, []
        repo = r"(?P<repo>[^/]+/[^/]+)"
        hub.routes += [
            ("POST", re.compile(r"^/api/repos/create$"), self._create),
            ("POST", re.compile(r"^/api/validate-yaml$"), self._validate_yaml),
            ("POST", re.compile(rf"^/api/models/{repo}/preupload/(?P<rev>[^/]+)$"), self._preupload),
            ("POST", re.compile(rf"^/api/models/{repo}/commit/(?P<rev>[^/]+)$"), self._commit),
        ]

    @staticmethod
    def _body(handler) -> bytes:
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    def _validate_yaml(self, handler, match) -> None:
        self._body(handler)  # read, or it would be taken for the next request on this connection
        self.hub._send(handler, 200, {"errors": [], "warnings": []})

    def _writer(self, handler, namespace: str) -> bool:
        """Whether the request's token may write to `namespace`; else the 401/403 is answered."""
        token = (handler.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        user = self.hub.writers.get(token)
        if user is None:
            self.hub._error(handler, 401, "Unauthorized", "Invalid credentials in Authorization header")
            return False
        if namespace != user and namespace not in self.hub.orgs.get(user, ()):
            self.hub._error(handler, 403, "Forbidden", f"You don't have the rights to write to {namespace}")
            return False
        return True

    def _create(self, handler, match) -> None:
        payload = json.loads(self._body(handler))
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        if not self._writer(handler, payload.get("organization") or ""):
            return
        if repo_id in self.hub.repos:  # the Hub's 409 carries the url, which create_repo(exist_ok=True) returns
            message = "You already created this model repo"
            self.hub._send(handler, 409, {"error": message, "url": f"{self.hub.url}/{repo_id}"},
                           {"X-Error-Code": "RepoExists", "X-Error-Message": message})
            return
        self.hub.add_repo(repo_id, {}, private=payload.get("visibility") == "private",
                          allowed_tokens=[t for t, u in self.hub.writers.items() if u == payload.get("organization")])
        self.hub._send(handler, 200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id})

    def _target(self, handler, match):
        body = self._body(handler)
        repo = self.hub.repos.get(match.group("repo"))
        if repo is None:
            self.hub._error(handler, 404, "RepoNotFound", "Repository not found")
            return None, body
        return (repo if self._writer(handler, repo.repo_id.split("/")[0]) else None), body

    def _preupload(self, handler, match) -> None:
        repo, body = self._target(handler, match)
        if repo is not None:
            files = json.loads(body)["files"]
            self.hub._send(handler, 200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_oid(repo.files[f["path"]]) if f["path"] in repo.files else None} for f in files]})

    def _commit(self, handler, match) -> None:
        repo, body = self._target(handler, match)
        if repo is None:
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        summary = next(line["value"]["summary"] for line in lines if line["key"] == "header")
        added = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                 for line in lines if line["key"] == "file"}
        repo.files.update(added)
        repo.sha = hashlib.sha1((repo.sha + "".join(sorted(added))).encode()).hexdigest() if added else repo.sha
        repo.revisions["main"] = repo.sha
        self.hub.commits.append((repo.repo_id, summary, sorted(added)))
        self.hub._send(handler, 200, {"commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{repo.sha}",
                                      "commitOid": repo.sha, "pullRequestUrl": None})


@pytest.fixture
def fake_hub_upload(fake_hub, monkeypatch):
    """The fake Hub accepting uploads from user "alice" (token "hf_alice", not yet given to huggingface_hub)."""
    Uploads(fake_hub)
    fake_hub.writers["hf_alice"] = "alice"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return fake_hub
