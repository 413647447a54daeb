"""Start and stop the local servers that speak the cloud stores' real protocols.

Every server binds 127.0.0.1 on a free port, runs in its own process group (stopped by group
id, so a server's children go with it), and is told by the kernel to exit when the test process
dies, however it dies. Nothing here reaches the internet:

  moto server            S3, STS, IAM, KMS, Glue ...   `start_moto()`
  gcp-storage-emulator   GCS JSON API (in memory)       `start_gcs()`
  Azurite (npm)          Azure Blob                     `start_azurite()`

Use the pytest fixtures in fixtures.py rather than these functions, unless a test needs a server
of its own (e.g. moto with IAM authentication switched on).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite-blob"
START_TIMEOUT_S = 60

# The test credentials of each emulator (public, documented values: they protect nothing).
MOTO_KEY_ID, MOTO_SECRET = "testing", "testing"
MOTO_REGION = "us-east-1"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} while starting:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on 127.0.0.1:{self.port} within {START_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL if it lingers."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the test process dies, even by SIGKILL,
    so a killed test run leaves no server behind (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _spawn(name: str, argv: list[str], port: int, env: dict | None = None) -> ServerProcess:
    fd, log = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True,
                                   # fixtures spawn servers from the main thread, where preexec_fn is safe
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)  # noqa: PLW1509
    server = ServerProcess(name, port, process, Path(log))
    server.wait_until_listening()
    return server


@dataclass
class MotoServer:
    """moto in server mode: one endpoint for every AWS service (S3, STS, IAM, KMS, Glue)."""

    server: ServerProcess
    endpoint_url: str = field(init=False)

    def __post_init__(self):
        self.endpoint_url = self.server.base_url

    def client(self, service: str, **overrides):
        import boto3

        kwargs = {"endpoint_url": self.endpoint_url, "region_name": MOTO_REGION, "aws_access_key_id": MOTO_KEY_ID,
                  "aws_secret_access_key": MOTO_SECRET}
        return boto3.client(service, **{**kwargs, **overrides})

    def reset(self) -> None:
        """Forget every bucket, table, user and key (moto's own reset endpoint)."""
        request = urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self.server.stop()


def start_moto(initial_no_auth_actions: int | None = None) -> MotoServer:
    """`initial_no_auth_actions=N` switches on IAM authentication after the first N requests
    (moto's INITIAL_NO_AUTH_ACTION_COUNT), for tests of denied access and rejected keys."""
    port = free_port()
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": str(initial_no_auth_actions)} if initial_no_auth_actions is not None else {}
    argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    return MotoServer(_spawn("moto", argv, port, env))


@dataclass
class GCSServer:
    server: ServerProcess
    endpoint_url: str = field(init=False)

    def __post_init__(self):
        self.endpoint_url = self.server.base_url

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test-project", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint_url})

    def stop(self) -> None:
        self.server.stop()


def start_gcs() -> GCSServer:
    port = free_port()
    argv = [str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"]
    return GCSServer(_spawn("gcp-storage-emulator", argv, port))


@dataclass
class AzuriteServer:
    server: ServerProcess
    location: Path

    @property
    def account_url(self) -> str:
        return f"{self.server.base_url}/{AZURITE_ACCOUNT}"

    def connection_string(self, key: str = AZURITE_KEY) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
                f"BlobEndpoint={self.account_url};")

    def client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string())

    def stop(self) -> None:
        self.server.stop()


def start_azurite(location: Path) -> AzuriteServer:
    """Azurite from ./node_modules (`make setup-test` installs it). --skipApiVersionCheck because the
    Python SDK speaks a newer API version than Azurite 3.35 knows; --disableTelemetry because
    Azurite would otherwise send usage data."""
    if not AZURITE_BIN.exists():
        raise RuntimeError(f"{AZURITE_BIN} is missing: run `make setup-test` (npm install of azurite)")
    port = free_port()
    argv = [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
            "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]
    return AzuriteServer(_spawn("azurite", argv, port), location)
