"""Servers for the integration tests, shared by every module: a throwaway PostgreSQL cluster on a free loopback
port (installing the Debian package first when the binaries are missing and the tests run as root), `mlflow
server` on it with an artifacts destination on local disk, and one smoke run of `miniaturize run` logging to
it (through MLFLOW_TRACKING_URI) and to the session's real Prefect server (`prefect_api`, tests/conftest.py).
Session-scoped, so the tracking-server checks and the browser checks of the UIs read the same run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.flows.conftest import BIN, make_project, run_cli

# postgres refuses to run as root: when the tests run as root, the cluster belongs to this OS user.
CLUSTER_OWNER = "postgres"
DB_NAME, DB_USER, DB_PASSWORD = "mlflow", "mlflow", "mlflow-integration"

# --- PostgreSQL ------------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and psql: from PATH, else the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return installed[-1].parent if installed else None


def ensure_postgres_installed() -> Path:
    bin_dir = postgres_bin_dir()
    if bin_dir is not None:
        return bin_dir
    if os.geteuid() != 0:
        pytest.skip(
            "PostgreSQL is not installed (no initdb/pg_ctl) and installing it needs root: apt-get install postgresql"
        )
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    bin_dir = postgres_bin_dir()
    assert bin_dir is not None, "apt-get installed postgresql but initdb/pg_ctl are still missing"
    return bin_dir


def ensure_os_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )


@dataclass(frozen=True)
class Postgres:
    """A throwaway cluster: data, unix socket and log under `root`, TCP on 127.0.0.1:`port`."""

    bin_dir: Path
    root: Path
    port: int
    run_as: tuple[str, ...]  # ("runuser", "-u", "postgres", "--") when the tests run as root

    def run(self, *args: str) -> subprocess.CompletedProcess:
        # cwd inside the cluster folder: the cluster owner may not be allowed into the caller's directory
        done = subprocess.run([*self.run_as, *args], cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self.run(
            str(self.bin_dir / "psql"),
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.root / "socket"),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        )
        return done.stdout.strip()

    def uri(self, database: str) -> str:
        # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not psycopg2.
        return f"postgresql+psycopg2://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{database}"


def start_postgres(bin_dir: Path) -> Postgres:
    root = Path(tempfile.mkdtemp(prefix="miniaturize-pg-"))  # not under pytest's tmp: that is private to root
    run_as: tuple[str, ...] = ()
    if os.geteuid() == 0:
        ensure_os_user(CLUSTER_OWNER)
        shutil.chown(root, CLUSTER_OWNER)
        run_as = ("runuser", "-u", CLUSTER_OWNER, "--")
    pg = Postgres(bin_dir, root, free_port(), run_as)
    try:
        pg.run("mkdir", str(root / "socket"))
        # Trust on the unix socket (only the owner reaches it), passwords over TCP, which is how MLflow connects.
        pg.run(
            str(bin_dir / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        # fsync off: a test cluster that dies with its tmp folder needs no durability, and it saves seconds.
        settings = (
            f"-c listen_addresses=127.0.0.1 -c port={pg.port} -c unix_socket_directories={root / 'socket'} -c fsync=off"
        )
        pg.run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(root / "data"),
            "-l",
            str(root / "postgres.log"),
            "-o",
            settings,
            "-w",
            "-t",
            "60",
            "start",
        )
        pg.psql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
        pg.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
    except BaseException:
        stop_postgres(pg)
        raise
    return pg


def stop_postgres(pg: Postgres) -> None:
    """Stop the cluster if it runs, then remove its folder."""
    try:
        if (pg.root / "data" / "postmaster.pid").exists():
            pg.run(str(pg.bin_dir / "pg_ctl"), "-D", str(pg.root / "data"), "-m", "fast", "-w", "-t", "60", "stop")
    finally:
        shutil.rmtree(pg.root, ignore_errors=True)


# --- MLflow server ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingServer:
    uri: str
    artifacts: Path  # the server's --artifacts-destination
    postgres: Postgres


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """mlflow server runs uvicorn as a child: signal the whole group it leads."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> TrackingServer:
    """`mlflow server` with a fresh PostgreSQL database as backend store and a local artifacts destination."""
    pg = start_postgres(ensure_postgres_installed())
    try:
        workdir = tmp_path_factory.mktemp("mlflow_server")
        artifacts, log, port = workdir / "artifacts", workdir / "mlflow-server.log", free_port()
        # Without job execution the server is 2 processes (~420 MB) instead of 10 (~1.7 GB).
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    pg.uri(DB_NAME),
                    "--artifacts-destination",
                    str(artifacts),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            # The first start creates the schema in PostgreSQL (migrations), slower than a restart.
            wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, seconds=180)
            yield TrackingServer(f"http://127.0.0.1:{port}", artifacts, pg)
        finally:
            stop_process_group(proc)
    finally:
        stop_postgres(pg)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, prefect_api, tracking_server) -> Path:
    """`miniaturize run` at smoke scale, logging to the tracking server; returns the project folder."""
    project = make_project(tmp_path_factory.mktemp("integration") / "project")
    done = run_cli(["run"], project, prefect_api, timeout=1200, extra_env={"MLFLOW_TRACKING_URI": tracking_server.uri})
    if done.returncode != 0:
        pytest.fail(f"miniaturize run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return project
