"""Start bqemulator (BigQuery REST + gRPC on 127.0.0.1) offline, for the BigQuery destination tests.

Runs in its own virtualenv (.venv-bq, `make setup-test`): bqemulator pins a sqlglot that fakesnow
cannot use. Two patches, both to what the emulator does, never to our code:
- skip the DuckDB 'spatial' extension download (it needs the internet; GEOGRAPHY, unused here,
  becomes unavailable),
- read gzip-compressed newline-delimited JSON uploads, as BigQuery does: the emulator stores an
  upload as `<id>.bin` and DuckDB infers compression from the file name only.

usage: python bqemu_server.py REST_PORT GRPC_PORT
"""

import sys

from bqemulator.jobs import executor
from bqemulator.storage import engine

engine.DuckDBEngine._load_spatial = lambda self: None


def _load_json(path, target_ref, ctx):
    with open(path, "rb") as upload:
        gzipped = upload.read(2) == b"\x1f\x8b"
    ctx.engine.execute(f"COPY {target_ref} FROM ? (FORMAT JSON{', COMPRESSION gzip' if gzipped else ''})", [path])


executor._LOAD_FORMAT_HANDLERS["NEWLINE_DELIMITED_JSON"] = _load_json
executor._LOAD_FORMAT_HANDLERS["JSON"] = _load_json

from bqemulator.cli import main  # after the patches, so the server it starts uses them

sys.argv = ["bqemulator", "start", "--rest-host", "127.0.0.1", "--rest-port", sys.argv[1], "--grpc-host", "127.0.0.1",
            "--grpc-port", sys.argv[2], "--ephemeral", "--project", "test-project", "--log-level", "warning"]
main()
