"""A stand-in for Mixpanel's Raw Event Export API that costs (almost) nothing, for benchmarks/run.py.

`python benchmarks/stream_server.py --input day.jsonl` prints `{"url": "http://127.0.0.1:PORT"}`
and serves `/api/2.0/export` until killed: one gzip-compressed (Content-Encoding: gzip), chunked
(Transfer-Encoding: chunked) response of the day's JSON lines, as Mixpanel sends it. The body is
compressed once into `<input>.gz` (cached next to the input) and streamed from that file, so
the server spends its time in `sendfile`-like copies, not in gzip: what the benchmark measures is
the client side (our export, or a baseline reading the same stream).

It checks what our client sends (service-account Basic auth from the env vars BENCH_MIXPANEL_USERNAME
and BENCH_MIXPANEL_SECRET, `project_id`, `from_date`, `to_date`) and answers 401/400 like
Mixpanel when they are missing, so a misconfigured benchmark fails instead of measuring an error
page. It ignores `where`/`event` filters: the input is one UTC day, the window asked for.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from isal import igzip

CHUNK = 1 << 20
EXPORT_PATH = "/api/2.0/export"
USER_ENV, SECRET_ENV = "BENCH_MIXPANEL_USERNAME", "BENCH_MIXPANEL_SECRET"


def gzip_once(path: Path) -> Path:
    """`path` compressed to `<path>.gz` once (ISA-L level 2: near gzip -6's ratio, fast to make)."""
    target = path.with_name(path.name + ".gz")
    if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    tmp = target.with_suffix(".gz.tmp")
    with open(path, "rb") as src, igzip.open(tmp, "wb", compresslevel=2) as dst:
        while block := src.read(16 * CHUNK):
            dst.write(block)
    os.replace(tmp, target)
    return target


def handler(body: Path, username: str, secret: str) -> type[BaseHTTPRequestHandler]:
    expected_auth = "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()

    class Export(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked transfer needs 1.1

        def log_message(self, format, *args):  # quiet: the harness measures, it does not read logs
            pass

        def _error(self, status: int, message: str) -> None:
            data = json.dumps({"error": message, "status": "error"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlsplit(self.path)
            params = parse_qs(url.query)
            if url.path != EXPORT_PATH:
                return self._error(404, f"no such endpoint {url.path}")
            if self.headers.get("Authorization") != expected_auth:
                return self._error(401, "Unable to authenticate request")
            missing = [p for p in ("project_id", "from_date", "to_date") if not params.get(p)]
            if missing:
                return self._error(400, f"missing parameter(s): {', '.join(missing)}")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                with open(body, "rb") as f:
                    while block := f.read(CHUNK):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading; nothing to clean up

    return Export


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client closing its keep-alive connection after the body is normal, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="the day's JSON lines (compressed once, cached)")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args()
    username, secret = os.environ.get(USER_ENV), os.environ.get(SECRET_ENV)
    if not (username and secret):
        print(f"set {USER_ENV} and {SECRET_ENV} (the credentials the server accepts)", file=sys.stderr)
        return 2
    body = gzip_once(args.input)
    server = _Server(("127.0.0.1", args.port), handler(body, username, secret))
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}"}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
