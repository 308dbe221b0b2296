"""The MLflow server of the compose stack runs its basic-auth app. A real `mlflow server --app-name basic-auth`
on loopback, started as infra/docker-compose.yml starts it (through infra/require-secrets.sh, with
infra/mlflow-auth.ini and the admin password from the environment) but with SQLite stores under tmp_path,
refuses to move a registered model's alias for an anonymous client (401) and for a signed-in user without
EDIT on the model (403), and lets the admin move it.

Not marked `integration`: it takes 15-30 s on 2 cores, most of it the server start, so `make test` runs it.
Needs `mlflow[auth]` (Flask-WTF), which the `test` extra installs.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.flows.conftest import BIN, REPO

ADMIN, ADMIN_PASSWORD = "admin", "not-the-sample-admin-password"
READER, READER_PASSWORD = "reader", "reader-password-12"
MODEL = "miniaturize-sentiment"


def auth_ini(tmp_path: Path) -> Path:
    """The compose stack's infra/mlflow-auth.ini with its user store moved into tmp_path; the admin user and
    password come from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD, as in the stack."""
    config = configparser.ConfigParser()
    config.read(REPO / "infra" / "mlflow-auth.ini")
    assert "admin_password" not in config["mlflow"], "the admin password belongs in infra/.env, not the ini"
    config["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'basic_auth.db'}"
    ini = tmp_path / "basic_auth.ini"
    with ini.open("w") as out:
        config.write(out)
    return ini


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` on 127.0.0.1:<free port>; yields its URL."""
    tmp_path = tmp_path_factory.mktemp("mlflow_auth")
    port = free_port()
    env = os.environ | {
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini(tmp_path)),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        # Started as the compose file starts it: through the guard that refuses missing or sample secrets.
        proc = subprocess.Popen(
            [
                "sh",
                str(REPO / "infra" / "require-secrets.sh"),
                "MLFLOW_AUTH_ADMIN_PASSWORD",
                "MLFLOW_FLASK_SERVER_SECRET_KEY",
                "--",
                str(BIN / "mlflow"),
                "server",
                "--app-name",
                "basic-auth",
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--artifacts-destination",
                str(tmp_path / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()  # /health needs no login
                break
            except OSError:
                assert time.monotonic() < deadline, f"no healthy server in 120 s:\n{log.read_text()[-4000:]}"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def call(url: str, method: str, path: str, body: dict | None = None, user: tuple[str, str] | None = None):
    """One REST call; returns (HTTP status, decoded JSON body or None)."""
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(user).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None


def test_only_the_admin_can_move_a_registered_model_alias(auth_server, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    admin = (ADMIN, ADMIN_PASSWORD)
    # The admin registers a model with one version and names it @champion, through the Python client that the
    # pipeline's workers use, signed in by MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    client = MlflowClient(tracking_uri=auth_server)
    run = client.create_run(client.create_experiment("auth-check"), run_name="r")
    client.create_registered_model(MODEL)
    v1 = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version
    v2 = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version
    client.set_registered_model_alias(MODEL, "champion", v1)
    assert (
        call(auth_server, "POST", "users/create", {"username": READER, "password": READER_PASSWORD}, user=admin)[0]
        == 200
    )

    move = {"name": MODEL, "alias": "champion", "version": v2}
    # Anonymous: 401 from the REST API and from the Python client, for writes and reads alike.
    assert call(auth_server, "POST", "registered-models/alias", move)[0] == 401
    assert call(auth_server, "GET", f"registered-models/get?name={MODEL}")[0] == 401
    assert call(auth_server, "POST", "registered-models/alias", move, user=(ADMIN, "wrong-password-123"))[0] == 401
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(tracking_uri=auth_server).set_registered_model_alias(MODEL, "champion", v2)
    # A signed-in user with the default READ permission reads the model but may not move its alias: 403.
    reader = (READER, READER_PASSWORD)
    assert call(auth_server, "GET", f"registered-models/get?name={MODEL}", user=reader)[0] == 200
    assert call(auth_server, "POST", "registered-models/alias", move, user=reader)[0] == 403
    status, body = call(auth_server, "GET", f"registered-models/alias?name={MODEL}&alias=champion", user=admin)
    assert status == 200 and body["model_version"]["version"] == v1  # nothing moved it

    # The admin moves it.
    assert call(auth_server, "POST", "registered-models/alias", move, user=admin)[0] == 200
    status, body = call(auth_server, "GET", f"registered-models/alias?name={MODEL}&alias=champion", user=reader)
    assert status == 200 and body["model_version"]["version"] == v2
