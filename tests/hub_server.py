"""A small stand-in for the Hugging Face Hub over real HTTP, for tests that must not leave the machine.

It serves what huggingface_hub 2.4 calls to push (`create_repo`, card validation, `create_commit` with regular
uploads) and to download (`snapshot_download`: revision info, tree listing, `resolve` HEAD/GET). Repos live in
memory, one file map per commit; every request is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def git_blob_sha(content: bytes) -> str:
    """The id git gives a file's content, which the Hub serves as the ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    private: bool
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # (sha, files), oldest first

    def files_at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision == "main":
            return self.commits[-1]
        return next((commit for commit in self.commits if commit[0] == revision), None)


class HubServer:
    """Start with `with HubServer() as hub:`; `hub.url` is the value for HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The files on `main` of `repo_id`."""
        return self.repos[repo_id].files_at("main")[1]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(HubRequestHandler):
            hub = server

        return Handler


class HubRequestHandler(BaseHTTPRequestHandler):
    hub: HubServer

    def log_message(self, format, *args) -> None:  # the requests are recorded instead
        pass

    # -- routing ---------------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.hub.lock:
            self.hub.requests.append((method, path))
        routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", self._preupload),
            ("POST", rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", self._commit),
            ("GET", rf"/api/models/{REPO}(?:/revision/(?P<revision>[^/]+))?", self._repo_info),
            ("GET", rf"/api/models/{REPO}/tree/(?P<revision>[^/]+)", self._tree),
            ("GET", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                with self.hub.lock:
                    handler(method=method, **match.groupdict())
                return
        self._json(404, {"error": f"{method} {path} is not served by this test Hub"})

    # -- pushing ---------------------------------------------------------------------------------------------

    def _create_repo(self, method: str) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            self._json(401, {"error": "Invalid credentials in Authorization header"})
            return
        request = self._read_json()
        repo_id = f"{request['organization']}/{request['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            self._json(409, {"error": "You already created this model repo", "url": url})
            return
        self.hub.repos[repo_id] = Repo(private=request.get("visibility") == "private")
        self.hub.repos[repo_id].commits.append((hashlib.sha1(f"init {repo_id}".encode()).hexdigest(), {}))
        self._json(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, method: str) -> None:
        """The Hub's checks that matter here: the metadata parses and `base_model` is a model id, not a path."""
        content = self._read_json()["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        metadata = yaml.safe_load(match.group(1)) if match else {}
        errors = []
        base_models = metadata.get("base_model", [])
        for base_model in [base_models] if isinstance(base_models, str) else base_models:
            if not REPO_ID.match(base_model):
                errors.append(
                    {"message": f'"base_model" with value "{base_model}" is not valid. Use a model id'}
                )
        if not isinstance(metadata.get("tags", []), list):
            errors.append({"message": '"tags" must be an array'})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def _preupload(self, method: str, repo: str, revision: str) -> None:
        if (found := self._files(repo, revision)) is None:
            return
        files = found[1]
        self._json(
            200,
            {
                "files": [
                    {
                        "path": entry["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_sha(files[entry["path"]]) if entry["path"] in files else None,
                    }
                    for entry in self._read_json()["files"]
                ]
            },
        )

    def _commit(self, method: str, repo: str, revision: str) -> None:
        if (found := self._files(repo, revision)) is None:
            return
        files = dict(found[1])
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        for line in lines:
            if line["key"] == "file" and line["value"].get("encoding") == "base64":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] != "header":
                self._json(
                    400, {"error": f"this test Hub accepts base64 file additions only, not {line['key']}"}
                )
                return
        sha = hashlib.sha1(f"{repo} {len(self.hub.repos[repo].commits)}".encode()).hexdigest()
        self.hub.repos[repo].commits.append((sha, files))
        self._json(
            200, {"commitUrl": f"{self.hub.url}/{repo}/commit/{sha}", "commitOid": sha, "success": True}
        )

    # -- downloading -----------------------------------------------------------------------------------------

    def _repo_info(self, method: str, repo: str, revision: str | None) -> None:
        if (found := self._files(repo, revision or "main")) is None:
            return
        sha, files = found
        siblings = [{"rfilename": name} for name in sorted(files)]
        self._json(
            200, {"id": repo, "sha": sha, "private": self.hub.repos[repo].private, "siblings": siblings}
        )

    def _tree(self, method: str, repo: str, revision: str) -> None:
        if (found := self._files(repo, revision)) is None:
            return
        entries = [
            {"type": "file", "path": name, "size": len(content), "oid": git_blob_sha(content)}
            for name, content in sorted(found[1].items())
        ]
        self._json(200, entries)

    def _resolve(self, method: str, repo: str, revision: str, file: str) -> None:
        if (found := self._files(repo, revision)) is None:
            return
        sha, files = found
        if file not in files:
            self._json(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
            )
            return
        content = files[file]
        headers = {"ETag": f'"{git_blob_sha(content)}"', "X-Repo-Commit": sha}
        self._send(200, content, "application/octet-stream", headers)

    # -- helpers ---------------------------------------------------------------------------------------------

    def _files(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """The commit of `repo` at `revision`, or None after answering 404 the way the Hub does."""
        if repo not in self.hub.repos:
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        found = self.hub.repos[repo].files_at(revision)
        if found is None:
            self._json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        return found

    def _read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _read_json(self) -> dict:
        return json.loads(self._read_body())

    def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers or {})

    def _send(self, status: int, content: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
