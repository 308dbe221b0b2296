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


# The params file each task's DVC stages read; a run from another file is not what dvc.lock would describe.
TASK_PARAMS = {"sequence-classification": "params.yaml", "causal-lm": "configs/causal-lm.yaml"}
LM_PREFIX = "lm-"  # dvc.yaml names the causal-lm stages lm-ingest, lm-validate, ...


def dvc_stages(root: Path, params_file: Path | str | None = None,
               task: str = "sequence-classification") -> list[str] | None:
    """The dvc.yaml stages of `task`, or None when `params_file` is not the file those stages read."""
    import yaml

    if params_file is not None and Path(params_file).resolve() != (root / TASK_PARAMS[task]).resolve():
        return None
    if not (root / "dvc.yaml").is_file():
        return []
    names = list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))
    lm = task == "causal-lm"
    return [n for n in names if n.startswith(LM_PREFIX) == lm]


def commit_outputs(root: Path, stages: list[str] | None = None) -> tuple[bool, str]:
    """`dvc commit -f` for the given stages (default: the classification stages); returns (ok, message)."""
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return False, "DVC: no .dvc/ or dvc.yaml here, outputs not recorded"
    stages = dvc_stages(root) if stages is None else stages
    if not stages:
        return False, "DVC: not recorded (this params file is not the one dvc.yaml's stages read)"
    done = dvc(root, "commit", "--force", "--quiet", *stages)
    if done.returncode != 0:
        return False, f"DVC: commit failed: {(done.stderr or done.stdout).strip()[-400:]}"
    return True, "DVC: outputs recorded in dvc.lock (`dvc status` is clean; `dvc push` stores them)"


def status(root: Path) -> str:
    done = dvc(root, "status")
    return (done.stdout or done.stderr).strip()
