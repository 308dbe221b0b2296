"""Helpers for flow-level tests: a throwaway project workspace, the `miniaturize` CLI run in it, and the Flower
environment of the federation tests (the real local Prefect server, `prefect_api`, lives in tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# The suite runs on two workers, one per core: a second torch or ONNX Runtime thread per run would only
# oversubscribe the cores (measured: a tiny run, two at once, 97 s with two threads each, 88 s with one).
ONE_THREAD = {
    "params.yaml": {"threads": 1, "evaluate.threads": 1},
    "configs/causal-lm.yaml": {"threads": 1, "lm.evaluate.threads": 1},
    "configs/multitask.yaml": {"threads": 1, "evaluate.threads": 1},
}


def make_project(
    dest: Path, params_overrides: dict | None = None, profile: str | None = "smoke", config: str = "params.yaml"
) -> Path:
    """A copy of the project (code, dvc.yaml, .dvc config) in its own git repo, with the profile's values
    written into params.yaml and each file of configs/, so that a plain `miniaturize run` (and one with
    `--config configs/<task>.yaml`) is a smoke run DVC can record; `params_overrides` go into `config`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("components", "flows"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, dest / name)
    (dest / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    (dest / ".dvc" / "config").write_text(
        f"[core]\n    remote = local\n    analytics = false\n"
        f"['remote \"local\"']\n    url = {dest.parent / 'dvc-storage'}\n"
    )
    for name in ONE_THREAD:
        raw = yaml.safe_load((REPO / name).read_text())
        profiles = raw["profiles"]  # kept in the file: every dvc.yaml stage with params depends on it
        overrides = params_overrides if name == config else None
        for key, value in [
            *(profiles[profile] if profile else {}).items(),
            *ONE_THREAD[name].items(),
            *(overrides or {}).items(),
        ]:
            node = raw
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    # Reuse the downloaded source archive when the repository has one: same bytes, sha256-checked again.
    if (REPO / "data" / "raw").is_dir():
        shutil.copytree(REPO / "data" / "raw", dest / "data" / "raw")
    return dest


def run_cli(args: list[str], cwd: Path, prefect_api: str, timeout: int = 600, extra_env: dict | None = None):
    env = os.environ | {"PREFECT_API_URL": prefect_api, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env |= extra_env or {}
    return subprocess.run(
        [str(BIN / "miniaturize"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def flower_env():
    """The Flower environment (`flows.federation.env`): MINIATURIZE_FLOWER_VENV when set, else .venv-flower, built
    once (minutes) when missing or out of date."""
    from flows.federation import env

    return env.ensure(Path(os.environ.get("MINIATURIZE_FLOWER_VENV", REPO / ".venv-flower")))
