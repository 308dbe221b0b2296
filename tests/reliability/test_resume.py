"""A crash never leaves a half-written output that a later stage or run takes for complete.

Stages write into `.miniaturize/staging/<stage>/`, their outputs are renamed into place once they finish,
and the stage's record (what marks it complete) is written last. Killed with SIGKILL at any point, a re-run
resumes from the last completed stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flows import cache
from tests.flows.conftest import BIN
from tests.reliability.conftest import run_pipeline


def stage_outputs(project: Path) -> dict[str, str]:
    return {path.name: cache.tree_sha256(path) for path in (project / "models").iterdir() if path.name != "base"}


def test_a_stage_that_fails_half_way_keeps_the_previous_outputs_and_is_not_recorded(tiny_project, prefect_api,
                                                                                     monkeypatch):
    from flows import stages

    run_pipeline(tiny_project, prefect_api, until="distill")
    before = cache.tree_sha256(tiny_project / "models" / "student")
    real = stages.STAGES["distill"]

    def dies_half_way(p, ws, tracker):
        ws.student.mkdir(parents=True)
        (ws.student / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(stages.STAGES, "distill", dies_half_way)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_pipeline(tiny_project, prefect_api, until="distill", force=True)
    assert cache.tree_sha256(tiny_project / "models" / "student") == before
    assert not cache.StageCache(tiny_project).path("distill").exists()
    assert (tiny_project / ".miniaturize" / "failed" / "distill" / "models" / "student" / "model.safetensors").exists()
    monkeypatch.setitem(stages.STAGES, "distill", real)
    resumed = run_pipeline(tiny_project, prefect_api, until="distill")
    assert [name for name, s in resumed["stages"].items() if not s["cache_hit"]] == ["distill"]


def start_cli(project: Path, prefect_api: str, *args: str) -> subprocess.Popen:
    env = os.environ | {"PREFECT_API_URL": prefect_api, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([str(BIN / "miniaturize"), "run", *args], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(proc: subprocess.Popen, line_start: str, after_seconds: float, timeout: float = 300) -> str:
    """SIGKILL the run (its whole process group) `after_seconds` after it printed a line starting so."""
    seen, deadline = [], time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(line_start):
            time.sleep(after_seconds)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return "".join(seen)
        assert time.time() < deadline, "".join(seen)[-3000:]
    pytest.fail(f"the run ended before {line_start!r}:\n{''.join(seen)[-3000:]}")


def test_sigkill_during_a_stage_resumes_from_the_last_completed_stage(tiny_project, prefect_api):
    store = cache.StageCache(tiny_project)
    # First run: killed while the student is being distilled.
    printed = kill_when(start_cli(tiny_project, prefect_api, "--until", "prune"), "[distill] started", 1.0)
    assert "[finetune] finished" in printed
    assert [s for s in ("ingest", "validate", "finetune", "distill") if store.path(s).exists()] == \
        ["ingest", "validate", "finetune"]
    assert not (tiny_project / "models" / "student").exists(), "a half-distilled student is in place"
    teacher = cache.tree_sha256(tiny_project / "models" / "teacher")

    # Second run: forced, killed while the teacher is being trained again. The complete teacher of the first
    # run stays in place, with its record: the forced run had not finished anything yet.
    kill_when(start_cli(tiny_project, prefect_api, "--until", "prune", "--force"), "[finetune] started", 2.0)
    assert cache.tree_sha256(tiny_project / "models" / "teacher") == teacher

    # The re-run resumes: finished stages are skipped, the killed one and the rest run.
    resumed = run_pipeline(tiny_project, prefect_api, until="prune")
    ran = [name for name, stage in resumed["stages"].items() if not stage["cache_hit"]]
    assert ran == ["distill", "prune"], ran
    record = json.loads(store.path("prune").read_text())
    assert record["outputs"]["models/pruned"] == cache.tree_sha256(tiny_project / "models" / "pruned")
