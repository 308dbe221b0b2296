"""Training stages on several processes: finetune, distill and prune as `distributed.processes` processes.

`flows.stages.stage_table` wraps those three stages (of both tasks) with `data_parallel`. With
`distributed.processes` above 1, and when this process is not already one of a launch, the stage runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m flows.cli stage NAME --config <params>

on this machine, in the project folder, with the run's params and the caller's paths for the stage's
inputs and outputs (the pipeline's are in a staging folder until the stage has finished). Rank 0 logs into
the caller's MLflow run and hands the stage's result back in a JSON file; the other processes train their
share of every batch and neither log nor write (components/kit/distributed.py). So `miniaturize run` (the Prefect flow),
`miniaturize stage NAME --processes N` and dvc.yaml all train on N processes through one setting, and the
stage cache and MLflow see the same runs as after a single-process stage. Several machines: start the same
command with torchrun on each (README, "Distributed training").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from components.config import Params
from components.kit.tracking import StageResult, Tracker

DATA_PARALLEL_STAGES = ("finetune", "distill", "prune")


def data_parallel(name: str, stage_fn):
    """The stage, launched on `distributed.processes` processes when that is above 1."""
    def stage(p: Params, ws, tracker: Tracker) -> StageResult:
        from components.kit.distributed import world_size

        if p.distributed.processes == 1 or world_size() > 1:
            return stage_fn(p, ws, tracker)
        return launch(name, p, ws, getattr(tracker, "run_id", None))

    stage.__doc__ = stage_fn.__doc__
    return stage


class Paths:
    """A workspace with some of its paths replaced (`workspace_path` options of the stage command)."""

    def __init__(self, workspace, paths: dict[str, Path]):
        self.__dict__.update(_workspace=workspace, _paths=paths)

    def __getattr__(self, name: str):
        return self._paths[name] if name in self._paths else getattr(self._workspace, name)


def moved_paths(name: str, p: Params, ws) -> dict[str, str]:
    """The stage's inputs and outputs where `ws` puts them elsewhere than the plain workspace does."""
    from flows.stages import stage_table
    from flows.workspace import workspace_for

    plain, io = workspace_for(p.task, ws.root), stage_table(p.task).io[name]
    return {key: str(getattr(ws, key)) for key in io.inputs + io.outputs if getattr(ws, key) != getattr(plain, key)}


def launch_command(name: str, processes: int, params_file: Path, result_file: Path, run_id: str | None,
                   paths: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "flows.cli", "stage", name, "--config", str(params_file), "--result", str(result_file),
            *(["--run-id", run_id] if run_id else []),
            *[item for key, path in (paths or {}).items() for item in ("--workspace-path", f"{key}={path}")]]


def launch(name: str, p: Params, ws, run_id: str | None) -> StageResult:
    """Run stage `name` on `distributed.processes` processes of this machine; its result, read back."""
    import yaml

    processes = p.distributed.processes
    print(f"  {name}: training on {processes} processes (torchrun)", flush=True)
    # torchrun would pin every process to one thread; share this machine's cores between them instead.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))} | dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="miniaturize-launch-") as tmp:
        params_file, result_file = Path(tmp) / "params.yaml", Path(tmp) / "result.json"
        params_file.write_text(yaml.safe_dump(p.as_dict(), sort_keys=False))
        command = launch_command(name, processes, params_file, result_file, run_id, moved_paths(name, p, ws))
        done = subprocess.run(command, cwd=ws.root, env=env)
        if done.returncode != 0 or not result_file.exists():
            raise RuntimeError(f"{name} on {processes} processes failed (torchrun exit code {done.returncode}); "
                               "the processes' output is above")
        result = json.loads(result_file.read_text())
    return StageResult(metrics=result["metrics"], outputs={k: Path(v) for k, v in result["outputs"].items()},
                       info=result["info"])


def write_result(result: StageResult, path: Path) -> None:
    """What rank 0 hands back to `launch`."""
    path.write_text(json.dumps({"metrics": result.metrics, "outputs": {k: str(v) for k, v in result.outputs.items()},
                                "info": result.info}, default=str))
