"""DVC bookkeeping after a pipeline run: record the outputs of every stage in dvc.lock and the cache.

The Prefect flow produces exactly the outputs dvc.yaml declares, so `dvc commit` can record them without
re-running anything; `dvc status` then reports the pipeline up to date and `dvc push` can store it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"DVC_NO_ANALYTICS": "1"}
    return subprocess.run([dvc_executable(), *args], cwd=root, capture_output=True, text=True, env=env)


def commit_outputs(root: Path) -> tuple[bool, str]:
    """`dvc commit -f` for every stage; returns (ok, message)."""
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return False, "DVC: no .dvc/ or dvc.yaml here, outputs not recorded"
    done = dvc(root, "commit", "--force", "--quiet")
    if done.returncode != 0:
        return False, f"DVC: commit failed: {(done.stderr or done.stdout).strip()[-400:]}"
    return True, "DVC: outputs recorded in dvc.lock (`dvc status` is clean; `dvc push` stores them)"


def status(root: Path) -> str:
    done = dvc(root, "status")
    return (done.stdout or done.stderr).strip()
