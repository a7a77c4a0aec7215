"""A local HTTP server speaking the part of the Hugging Face Hub API that ``huggingface_hub`` downloads with.

``GET /api/models/<repo>/revision/<rev>`` (``/api/datasets/...`` for dataset repos) answers the repo's commit
and files (with sizes); ``HEAD`` and ``GET /<repo>/resolve/<commit-or-rev>/<file>`` (``/datasets/<repo>/...``)
give a file's metadata headers (``X-Repo-Commit``, ``ETag``) and bytes. Repos may need a bearer token (401
without it, as the Hub answers for private repos), an unknown revision is 404 ``RevisionNotFound``. Knobs for
the hostile cases: an extra listed file name (path traversal) and files sent truncated. ``downloads`` counts
file bodies served.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    token: str | None = None
    revisions: tuple[str, ...] = ("main",)
    extra_listing: list[str] = field(default_factory=list)
    truncate: bool = False


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    downloads: int = 0
    url: str = ""
    requests: list[str] = field(default_factory=list)

    datasets: dict[str, Repo] = field(default_factory=dict)

    def add(self, name: str, directory: Path, token: str | None = None) -> Repo:
        files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(name.encode() + b"".join(files.values())).hexdigest()
        self.repos[name] = Repo(files, commit, token)
        return self.repos[name]

    def add_dataset(self, name: str, files: dict[str, bytes], token: str | None = None) -> Repo:
        commit = hashlib.sha1(b"dataset" + name.encode() + b"".join(files.values())).hexdigest()
        self.datasets[name] = Repo(files, commit, token)
        return self.datasets[name]


def _handler(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _fail(self, status: int, code: str | None = None) -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Type", "application/json")
            payload = json.dumps({"error": code or "Invalid credentials"}).encode()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            hub.requests.append(f"{self.command} {path}")
            api = path.startswith("/api/")
            dataset = path.startswith(("/api/datasets/", "/datasets/"))
            rest_of_path = path.removeprefix("/api").removeprefix("/models").removeprefix("/datasets")
            parts = rest_of_path.lstrip("/").split("/")
            name = "/".join(parts[:2])
            repo = (hub.datasets if dataset else hub.repos).get(name)
            if repo is None:
                return self._fail(404, "RepoNotFound")
            if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
                return self._fail(401)
            kind, revision, rest = parts[2], parts[3], "/".join(parts[4:])
            if revision not in (*repo.revisions, repo.commit):
                return self._fail(404, "RevisionNotFound")
            if api and kind == "revision":
                listing = [{"rfilename": f, "size": len(data)} for f, data in repo.files.items()]
                listing += [{"rfilename": f, "size": 1} for f in repo.extra_listing]
                payload = json.dumps({"id": name, "sha": repo.commit, "siblings": listing}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return None
            if kind != "resolve" or rest not in repo.files:
                return self._fail(404, "EntryNotFound")
            data = repo.files[rest]
            self.send_response(200)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                hub.downloads += 1
                self.wfile.write(data[: len(data) // 2] if repo.truncate else data)
                if repo.truncate:
                    self.close_connection = True
            return None

    return Handler


@contextmanager
def serving(hub: FakeHub) -> Iterator[FakeHub]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
