"""A production-shaped Dagster deployment on this machine, for the daemon and browser tests.

PostgreSQL (Debian's server, started by the suite as the `postgres` user with initdb/pg_ctl in a
temporary folder), a DAGSTER_HOME whose dagster.yaml is `deploy/dagster.production.yaml`
verbatim (Postgres storage through env vars, the run queue, pools, run retries), and three
separate processes as on Kubernetes: a code server (`dagster code-server start`, which also
launches the run workers), `dagster-webserver` and `dagster-daemon`. Keeping the code server
apart from the daemon is what lets a test kill and restart the daemon while runs go on, as a
daemon pod restart does in production. Everything binds to 127.0.0.1 on free ports and runs in
its own process group, stopped by id when the fixture ends.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
PRODUCTION_YAML = REPO / "deploy" / "dagster.production.yaml"
BIN = Path(sys.executable).parent
LOCATION = "mixpanel_assets"
GENERATOR = REPO.parent / "shared" / "tools" / "gen_mixpanel_export.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll until `predicate()` is truthy; the timeout only bounds a hang, it asserts nothing about speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(interval)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise RuntimeError("Debian's postgresql is not installed (make setup-test installs it)")
    return Path(found[-1]).parent


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (initdb refuses root, so it runs as `postgres`)."""

    def __init__(self):
        self.bin = _postgres_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mp-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        data, sock = self.root / "data", self.root / "sock"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")
        self._mkdir(sock)
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-w", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={sock} -c fsync=off",
                  "start")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
        conn.close()

    def _mkdir(self, path: Path) -> None:
        path.mkdir()
        if self.as_root:
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.production.yaml reads."""
        return {"DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
                "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_DB": "dagster"}

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class Service:
    """One long-running process in its own process group, with its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, logs: Path):
        self.name, self.command, self.env, self.cwd = name, command, env, cwd
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group this service started (its pgid is its pid)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""


class DagsterStack:
    """Postgres + code server + webserver + daemon, loading the pipelines of `pipelines_file`."""

    days: list[str] = []
    project_id: int = 0
    source: Path | None = None

    def __init__(self, pipelines_file: Path, work: Path):
        self.work = work
        self.home = work / "dagster_home"
        self.home.mkdir(parents=True)
        shutil.copy(PRODUCTION_YAML, self.home / "dagster.yaml")
        self.postgres = Postgres()
        self.code_port, self.web_port = free_port(), free_port()
        (work / "code_location.py").write_text(
            "from mixpanel_assets.defs.build import build_definitions\n"
            f"defs = build_definitions({str(pipelines_file)!r})\n"
        )
        (work / "workspace.yaml").write_text(
            f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {self.code_port}\n"
            f"      location_name: {LOCATION}\n"
        )
        self.env = {**os.environ, **self.postgres.env(), "DAGSTER_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        logs = work / "logs"
        logs.mkdir()
        self.code_server = Service("code_server", [
            str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(self.code_port),
            "-f", str(work / "code_location.py"), "--location-name", LOCATION,
        ], self.env, work, logs)
        self.webserver = Service("webserver", [
            str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.web_port), "-w", str(work / "workspace.yaml"),
        ], self.env, work, logs)
        self.daemon = Service("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(work / "workspace.yaml")],
                              self.env, work, logs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> None:
        self.postgres.start()
        self.code_server.start()
        wait_for(self._code_server_up, 180, "the code server to answer\n" + self.logs(), interval=1)
        self.webserver.start()
        self.daemon.start()
        wait_for(self._location_loaded, 180, "the webserver to load the code location\n" + self.logs())

    def stop(self) -> None:
        for service in (self.daemon, self.webserver, self.code_server):
            service.stop()
        self.postgres.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log_tail()}" for s in (self.code_server, self.webserver, self.daemon))

    def restart_daemon(self) -> None:
        self.daemon.kill(signal.SIGKILL)
        self.daemon.start()

    # --- the webserver's GraphQL API, as the UI calls it --------------------------------------

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def _code_server_up(self) -> bool:
        if self.code_server.proc.poll() is not None:
            raise RuntimeError(f"the code server exited:\n{self.logs()}")
        check = subprocess.run([str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p",
                                str(self.code_port)], capture_output=True, env=self.env, timeout=60)
        return check.returncode == 0

    def _location_loaded(self) -> bool:
        try:
            data = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"
            )
        except (requests.RequestException, AssertionError):
            return False
        entries = data["workspaceOrError"].get("locationEntries") or []
        states = {e["name"]: (e["locationOrLoadError"] or {}).get("__typename") for e in entries}
        if states.get(LOCATION) == "PythonError":
            raise RuntimeError(f"the code location failed to load:\n{self.logs()}")
        return states.get(LOCATION) == "RepositoryLocation"

    def launch_backfill(self, asset_path: list[str], partitions: list[str]) -> str:
        """What the UI's "Materialize selected" on an asset's partitions sends."""
        data = self.graphql(
            """mutation Launch($params: LaunchBackfillParams!) {
                 launchPartitionBackfill(backfillParams: $params) {
                   __typename
                   ... on LaunchBackfillSuccess { backfillId }
                   ... on PythonError { message stack }
                   ... on UnauthorizedError { message }
                 }
               }""",
            {"params": {"assetSelection": [{"path": asset_path}], "partitionNames": partitions, "fromFailure": False}},
        )
        result = data["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        data = self.graphql(
            "query B($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }",
            {"id": backfill_id},
        )
        return data["partitionBackfillOrError"]["status"]

    def backfill_runs(self, backfill_id: str) -> list[dict]:
        data = self.graphql(
            """query R($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs { results {
                 runId status startTime endTime tags { key value } } } } }""",
            {"filter": {"tags": [{"key": "dagster/backfill", "value": backfill_id}]}},
        )
        return data["runsOrError"]["results"]

    def wait_for_backfill(self, backfill_id: str, timeout: float = 420) -> str:
        terminal = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
        status = wait_for(lambda: (s := self.backfill_status(backfill_id)) in terminal and s, timeout,
                          f"backfill {backfill_id} to finish\n{self.logs()}", interval=2)
        return status

    def step_interval(self, run_id: str, step_key: str) -> tuple[float, float]:
        """(start, end) of one step of a run, from the webserver's step stats."""
        data = self.graphql(
            "query S($id: ID!) { runOrError(runId: $id) { ... on Run { stepStats { stepKey startTime endTime } } } }",
            {"id": run_id},
        )
        [stats] = [s for s in data["runOrError"]["stepStats"] if s["stepKey"] == step_key]
        return stats["startTime"], stats["endTime"]

    def source_lines(self, day: str) -> list[bytes]:
        return (self.source / f"{day}.jsonl").read_bytes().splitlines()

    def dismiss_community_modal(self) -> None:
        """The UI covers the page with a "Join the Dagster community" modal on 127.0.0.1 until this is set."""
        self.graphql("mutation { setNuxSeen }")


@contextmanager
def running_stack(pipelines_file: Path, work: Path):
    stack = DagsterStack(pipelines_file, work)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


STACK_PROJECT_ID = 4242
STACK_DAYS = ["2024-11-20", "2024-11-21", "2024-11-22"]


@pytest.fixture(scope="session")
def dagster_stack():
    """One production-shaped deployment for the session: two date-ranged daily pipelines of one
    project over three generated days, `ui_daily` (browser test) and `restart_daily` (daemon test)."""
    work = Path(tempfile.mkdtemp(prefix="mp-stack-"))
    source = work / "mixpanel_files"
    source.mkdir()
    for i, day in enumerate(STACK_DAYS):
        subprocess.run([sys.executable, str(GENERATOR), "-n", "1500", "--day", day, "--seed", str(i),
                        "-o", str(source / f"{day}.jsonl")], check=True, capture_output=True)
    ranged = {"data_source": "events", "frequency": "daily", "from_date": STACK_DAYS[0], "to_date": STACK_DAYS[-1],
              "created": STACK_DAYS[0]}
    config = {
        "project": {"id": STACK_PROJECT_ID, "source": {"type": "local", "path": str(source)},
                    "state": {"path": str(work / "state")}},
        "pipelines": [
            {"name": "ui_daily", **ranged, "destination": {"type": "local", "path": str(work / "bucket_ui")}},
            {"name": "restart_daily", **ranged, "destination": {"type": "local", "path": str(work / "bucket_restart")}},
        ],
    }
    pipelines_file = work / "pipelines.yaml"
    pipelines_file.write_text(yaml.safe_dump(config, sort_keys=False))
    with running_stack(pipelines_file, work) as stack:
        stack.days, stack.project_id, stack.source = STACK_DAYS, STACK_PROJECT_ID, source
        yield stack
    shutil.rmtree(work, ignore_errors=True)
