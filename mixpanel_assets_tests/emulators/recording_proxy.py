"""A recording HTTP proxy in front of an emulator: what a client library really sends.

bqemulator cannot show what BigQuery does with some requests (partition decorators); what can be
checked is that the google-cloud-bigquery client sends the right ones. The client is pointed at
this proxy, which forwards every request unchanged to the emulator and keeps a copy of it (method,
path, JSON body), so a test asserts on the wire, not on a mock of our code.

    with RecordingProxy(emulator.endpoint) as proxy:
        client = bigquery.Client(..., client_options=ClientOptions(api_endpoint=proxy.endpoint))
        ...
        proxy.jobs("query")   # the job configurations sent, in order
"""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass
from typing import Self

import requests

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "host"}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # with the query string
    body: dict | None  # the JSON body, None for other bodies (uploaded file bytes)


class RecordingProxy:
    def __init__(self, target: str):
        self.target = target.rstrip("/")
        self.requests: list[Recorded] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    parsed = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                proxy.requests.append(Recorded(self.command, self.path, parsed if isinstance(parsed, dict) else None))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                answer = requests.request(self.command, proxy.target + self.path, headers=headers, data=body,
                                          allow_redirects=False, timeout=300)
                content = answer.content
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value.replace(proxy.target, proxy.endpoint))
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def jobs(self, kind: str) -> list[dict]:
        """The `configuration.<kind>` of every job inserted (query, load, copy), in order; a load
        job's configuration travels in the first request of its resumable upload."""
        found = []
        for r in self.requests:
            if r.method == "POST" and "/jobs" in r.path and r.body and kind in r.body.get("configuration", {}):
                found.append(r.body["configuration"][kind])
        return found

    def tables_created(self) -> list[dict]:
        return [r.body for r in self.requests
                if r.method == "POST" and r.path.split("?")[0].endswith("/tables") and r.body]
