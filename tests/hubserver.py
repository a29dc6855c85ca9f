"""A local stand-in for the part of the Hugging Face Hub API that push and pull use.

The real ``huggingface_hub`` client talks to it through ``HF_ENDPOINT``: create_repo, preupload (every file
"regular", so no LFS/Xet), commit (NDJSON, base64 content), repo tree, model info, and resolve (HEAD/GET).
Loopback only; repos live in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        self.private: dict[str, bool] = {}
        self.token = "hf_test_token"
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes | dict | list = b"", headers: dict | None = None, head=False):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {hub.token}"

            def do_POST(self):
                path = unquote(urlparse(self.path).path)
                body = self._body()
                if not self._authorized():
                    return self._send(401, {"error": "Invalid credentials"}, {"X-Error-Message": "Invalid credentials"})
                if path == "/api/validate-yaml":
                    import yaml

                    content = json.loads(body)["content"]
                    try:
                        meta = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
                        assert isinstance(meta, dict)
                    except Exception as e:  # noqa: BLE001
                        return self._send(400, {"error": f"invalid YAML: {e}"})
                    return self._send(200, {"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    d = json.loads(body)
                    repo = f"{d.get('organization') or 'tester'}/{d['name']}"
                    hub.repos.setdefault(repo, {})
                    hub.private[repo] = bool(d.get("private"))
                    hub.commits.setdefault(repo, "0" * 40)
                    return self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo, action = f"{parts[2]}/{parts[3]}", parts[4]
                    if repo not in hub.repos:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(
                            200,
                            {
                                "files": [
                                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                                ]
                            },
                        )
                    if action == "commit":
                        for line in body.decode().splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                v = item["value"]
                                hub.repos[repo][v["path"]] = base64.b64decode(v["content"])
                            elif item["key"] == "deletedFile":
                                hub.repos[repo].pop(item["value"]["path"], None)
                        sha = hashlib.sha1(json.dumps(sorted(hub.repos[repo])).encode() + body).hexdigest()
                        hub.commits[repo] = sha
                        return self._send(
                            200,
                            {
                                "commitUrl": f"{hub.url}/{repo}/commit/{sha}",
                                "commitOid": sha,
                                "commitMessage": "",
                                "pullRequestUrl": None,
                            },
                        )
                return self._send(404, {"error": f"not implemented: POST {path}"})

            def _get(self, head: bool):
                path = unquote(urlparse(self.path).path)
                parts = path.strip("/").split("/")
                if path == "/api/whoami-v2":
                    if not self._authorized():
                        return self._send(401, {"error": "Invalid credentials"}, head=head)
                    return self._send(200, {"name": "tester", "type": "user", "orgs": []}, head=head)
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo = f"{parts[2]}/{parts[3]}"
                    if repo not in hub.repos:
                        return self._send(
                            404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}, head
                        )
                    files, sha = hub.repos[repo], hub.commits[repo]
                    if len(parts) >= 5 and parts[4] == "tree":
                        return self._send(
                            200,
                            [
                                {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                for p, b in sorted(files.items())
                            ],
                            head=head,
                        )
                    return self._send(
                        200,
                        {
                            "id": repo,
                            "modelId": repo,
                            "sha": sha,
                            "private": hub.private.get(repo, False),
                            "siblings": [{"rfilename": p} for p in sorted(files)],
                        },
                        head=head,
                    )
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, filename = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                    data = hub.repos.get(repo, {}).get(filename)
                    if data is None:
                        return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head)
                    etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                    return self._send(
                        200,
                        data,
                        {"X-Repo-Commit": hub.commits[repo], "ETag": etag, "Content-Type": "application/octet-stream"},
                        head,
                    )
                return self._send(404, {"error": f"not implemented: GET {path}"}, head=head)

            def do_GET(self):
                self._get(False)

            def do_HEAD(self):
                self._get(True)

        return Handler
