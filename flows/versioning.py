"""DVC bookkeeping after a pipeline run: record the outputs of every stage in dvc.lock and the cache.

The Prefect flow produces exactly the outputs dvc.yaml declares, so `dvc commit` can record them without
re-running anything; `dvc status <the task's stages>` then reports them up to date, which is checked and
printed as a command to paste (a plain `dvc status` also lists the stages of the other tasks in dvc.yaml,
which a run of this one never touches), and `dvc push` can store them.
`record_run` is the one rule for which runs are recorded (`miniaturize run` and a scheduled run use it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from flows.stages import Task


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"DVC_NO_ANALYTICS": "1"}
    return subprocess.run([dvc_executable(), *args], cwd=root, capture_output=True, text=True, env=env)


def dvc_stages(root: Path, params_file: Path | str, task: Task) -> list[str] | None:
    """The dvc.yaml stages of `task` (its stage names under its `dvc_prefix`), or None when `params_file` is
    not the file those stages read: a run from another file is not what dvc.lock would describe."""
    import yaml

    if Path(params_file).resolve() != (root / task.params_file).resolve():
        return None
    if not (root / "dvc.yaml").is_file():
        return []
    names = set((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))
    return [task.dvc_prefix + name for name in task.stages if task.dvc_prefix + name in names]


def record_run(
    root: Path,
    params_file: Path | str,
    task: Task,
    stopped_after: str | None,
    customised: str | None,
    outcome: dict | None = None,
) -> str:
    """Record a finished run's outputs in DVC when that is what dvc.lock describes; returns the line to print.
    Only a complete run (not one `stopped_after` a stage: the later stages' outputs are from an older run) of
    the task's params file as written (not `customised`, which says how) is recorded. `outcome` (the
    pipeline's) says whether any stage ran; without it, `dvc status` finds out."""
    if stopped_after is not None:
        return f"DVC: not recorded (the run stopped after {stopped_after})"
    if customised:
        return f"DVC: not recorded ({customised})"
    ran = None if outcome is None else any(not s.get("cache_hit") for s in outcome.get("stages", {}).values())
    return commit_outputs(root, dvc_stages(root, params_file, task), ran)[1]


def commit_outputs(root: Path, stages: list[str] | None, ran: bool | None = None) -> tuple[bool, str]:
    """`dvc commit -f` for the given stages (None: the params file is not the one they read), then `dvc status`
    of the same stages; returns (ok, message), the message naming that status command. `ran`: whether any
    of them ran in this run (None: not known)."""
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return False, "DVC: no .dvc/ or dvc.yaml here, outputs not recorded"
    if not stages:
        return False, "DVC: not recorded (this params file is not the one dvc.yaml's stages read)"
    command = f"dvc status {' '.join(stages)}"
    # decide: an unchanged re-run's outputs are already what dvc.lock records, and one DVC process (seconds
    # each) is all it then costs; after a stage ran they are new, and that first check would be one process
    # more for nothing
    if not ran and changed_stages(status_of(root), stages) == []:
        return True, f"DVC: dvc.lock already records these outputs; `{command}` is clean (`dvc push` stores them)"
    done = dvc(root, "commit", "--force", "--quiet", *commit_targets(root, stages))
    if done.returncode != 0:
        return False, f"DVC: commit failed: {(done.stderr or done.stdout).strip()[-400:]}"
    changed = changed_stages(status_of(root), stages)
    if changed is None:
        return False, f"DVC: outputs recorded in dvc.lock, but `{command}` failed"
    if changed:
        return False, f"DVC: outputs recorded in dvc.lock, but `{command}` lists changes in {', '.join(changed)}"
    return True, f"DVC: outputs recorded in dvc.lock; `{command}` is clean (`dvc push` stores them)"


def commit_targets(root: Path, stages: list[str]) -> list[str]:
    """The `dvc commit` arguments that record exactly `stages`: `--with-deps` and the last of them (those no
    other of them depends on) when everything upstream of those is `stages` itself, else the stages by name.
    DVC parses dvc.yaml and dvc.lock, and rewrites dvc.lock, once per target, but once in all for one
    `--with-deps` target (measured: 3.4 s against 12.5 s for the 11 classification stages)."""
    upstream = upstream_stages(root)
    wanted = set(stages)
    last = [name for name in stages if not any(name in upstream.get(other, ()) for other in wanted)]
    closure = set(last).union(*(upstream.get(name, set()) for name in last))
    return ["--with-deps", *last] if closure == wanted else list(stages)


def upstream_stages(root: Path) -> dict[str, set[str]]:
    """Every dvc.yaml stage with all the stages it depends on through their outputs, as DVC links them (a
    dependency path equal to, inside or above an output path)."""
    import yaml

    declared = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})

    def paths(entries) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]

    def overlap(a: str, b: str) -> bool:
        a, b = a.rstrip("/"), b.rstrip("/")
        return a == b or a.startswith(b + "/") or b.startswith(a + "/")

    outs = {
        name: paths(s.get("outs")) + paths(s.get("metrics")) + paths(s.get("plots")) for name, s in declared.items()
    }
    direct = {
        name: {
            other for dep in paths(s.get("deps")) for other, made in outs.items() if any(overlap(dep, o) for o in made)
        }
        for name, s in declared.items()
    }
    closure: dict[str, set[str]] = {}

    def walk(name: str) -> set[str]:
        if name not in closure:
            closure[name] = set()  # a cycle (DVC refuses one anyway) ends here
            closure[name] = set(direct.get(name, ())).union(*(walk(d) for d in direct.get(name, ())))
        return closure[name]

    return {name: walk(name) for name in declared}


def status_of(root: Path) -> subprocess.CompletedProcess:
    """`dvc status --json` of the whole project. Not of the task's stages by name: DVC parses dvc.yaml and
    dvc.lock again for every target it is given (measured: 3.8 s for the 11 classification stages, 1.3 s for
    all of dvc.yaml at once), so the caller picks its stages out of the whole answer."""
    return dvc(root, "status", "--json")


def changed_stages(status: subprocess.CompletedProcess, stages: list[str] | None = None) -> list[str] | None:
    """What `dvc status --json` says changed (stage names, or paths of other DVC files), only `stages` when
    given; None when it failed."""
    import json

    if status.returncode != 0:
        return None
    try:
        changed = list(json.loads(status.stdout or "{}"))
    except ValueError:
        return None
    return changed if stages is None else [name for name in changed if name in stages]
