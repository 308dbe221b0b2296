"""The compose stack's file, read without Docker: ports on loopback unless BIND_ADDRESS says otherwise, the
logins of MLflow and Prefect wired from infra/.env, pinned images whose versions agree with the workers'
clients, the Flower SuperLink's image built as the Flower environment, and the entrypoint guard that refuses
missing or sample secrets.
(`docker compose -f infra/docker-compose.yml config` renders the same file with a real .env.)"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from tests.flows.conftest import REPO

INFRA = REPO / "infra"
GUARD = "/opt/miniaturize/require-secrets.sh"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_published_ports_listen_on_loopback_by_default(compose):
    published = {name: service["ports"] for name, service in compose["services"].items() if "ports" in service}
    assert set(published) == {"minio", "mlflow", "prefect-server", "flower-superlink"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} on every interface"
    assert env_example()["BIND_ADDRESS"] == "127.0.0.1"


def test_mlflow_and_prefect_require_logins_from_infra_env(compose):
    services = compose["services"]
    mlflow = services["mlflow"]
    assert "--app-name basic-auth" in " ".join(mlflow["command"])
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_AUTH_ADMIN_PASSWORD:?")
    assert mlflow["environment"]["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SERVER_SECRET_KEY:?")
    auth_string = "${PREFECT_API_AUTH_STRING:?set it in infra/.env}"
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == auth_string
    for name in ("worker-cpu", "worker-gpu"):
        env = {**compose["x-worker"]["environment"], **services[name].get("environment", {})}
        assert env["PREFECT_API_AUTH_STRING"] == auth_string
        assert env["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
        assert env["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_AUTH_ADMIN_PASSWORD:?set it in infra/.env}"
    # Every secret the services check is in the template, with a sample value they refuse.
    sample = env_example()
    for key in (
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "PREFECT_API_AUTH_STRING",
    ):
        assert "change-me" in sample[key], key
    assert "/infra/.env" in (REPO / ".gitignore").read_text().splitlines()


def test_services_holding_secrets_start_through_the_guard(compose):
    services = compose["services"]
    checked = {
        "postgres": ["POSTGRES_PASSWORD"],
        "minio": ["MINIO_ROOT_PASSWORD"],
        "mlflow": ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"],
        "prefect-server": ["PREFECT_SERVER_API_AUTH_STRING"],
        "worker-cpu": ["PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD"],
        "worker-gpu": ["PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD"],
    }
    for name, names in checked.items():
        entrypoint = services[name].get("entrypoint") or compose["x-worker"]["entrypoint"]
        start = entrypoint.index(GUARD)
        assert entrypoint[start - 1] == "sh" and entrypoint[start + 1 : start + 1 + len(names) + 1] == [*names, "--"]
        volumes = services[name].get("volumes", [])
        assert f"./require-secrets.sh:{GUARD}:ro" in volumes, name


def test_images_are_pinned_and_clients_match_the_servers(compose):
    for name, service in compose["services"].items():
        if "image" in service:
            image = re.sub(r"\$\{[A-Z_]+:-(.+)\}", r"\1", service["image"])
            assert re.search(r":(\d+\.\d+|RELEASE\.)", image) and "latest" not in image, f"{name}: {image}"
    prefect_image = compose["services"]["prefect-server"]["image"]
    worker = (INFRA / "worker.Dockerfile").read_text()
    mlflow = (INFRA / "mlflow.Dockerfile").read_text()
    prefect_version = re.search(r"ARG PREFECT_VERSION=(\S+)", worker)[1]
    assert prefect_image == f"prefecthq/prefect:{prefect_version}-python3.11"
    assert yaml.safe_load((REPO / "prefect.yaml").read_text())["prefect-version"] == prefect_version
    assert re.search(r"ARG MLFLOW_VERSION=(\S+)", worker)[1] == re.search(r"ARG MLFLOW_VERSION=(\S+)", mlflow)[1]
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in mlflow


def test_the_flower_superlink_runs_the_flower_environment(compose):
    """The SuperLink's image installs what .venv-flower holds (the same torch pin, then requirements-flower.txt),
    installs nothing at run time, and its build context holds only components/."""
    from flows.federation import env

    service = compose["services"]["flower-superlink"]
    dockerfile = (REPO / service["build"]["dockerfile"]).read_text()
    assert env.TORCH in dockerfile and "-r requirements-flower.txt" in dockerfile
    assert "--disable-runtime-dependency-installation" in service["command"] and "healthcheck" in service
    ignored = (REPO / (service["build"]["dockerfile"] + ".dockerignore")).read_text().splitlines()
    assert ignored[1:3] == ["*", "!components/"]


@pytest.mark.parametrize(
    "value, started", [(None, False), ("", False), ("change-me-mlflow-admin", False), ("a-real-secret-value", True)]
)
def test_guard_refuses_missing_or_sample_secrets(value, started):
    env = {k: v for k, v in os.environ.items() if k != "SECRET"} | ({"SECRET": value} if value is not None else {})
    done = subprocess.run(
        ["sh", str(INFRA / "require-secrets.sh"), "SECRET", "--", "echo", "started"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if started:
        assert done.returncode == 0 and done.stdout == "started\n"
    else:
        assert done.returncode == 1 and done.stdout == "" and "refusing to start: SECRET" in done.stderr
