"""Training stages on several processes: finetune, distill and prune as `distributed.processes` processes.

Every stage runs through `run`. For a stage whose record says it trains (`Stage.data_parallel`: finetune,
distill and prune of both tasks), with `distributed.processes` above 1, and when this process is not
already one of a launch, the stage runs

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
from flows import stage_metrics
from flows.stages import Task


def run(task: Task, name: str, p: Params, ws, tracker: Tracker) -> StageResult:
    """Stage `name` of `task`, launched on `distributed.processes` processes when it trains and that is above
    1 (and this process is not already one of a launch); in this process otherwise, where the files DVC shows
    of it (metrics, training curves) are written once it has returned (`flows.stage_metrics`)."""
    from components.kit.processes import world_size

    stage = task.stages[name]
    if not stage.data_parallel or p.distributed.processes == 1 or world_size() > 1:
        # a stage that trains here runs at `threads`; a launch's processes share the cores by OMP_NUM_THREADS
        if (stage.trains or stage.data_parallel) and world_size() == 1:
            from components.kit.training import use_threads

            use_threads(p.threads)
        return stage_metrics.recorded(task, name, ws, tracker, lambda recorder: stage.run(p, ws, recorder))
    return launch(task, name, p, ws, getattr(tracker, "run_id", None))


def training_stages(task: Task) -> list[str]:
    """The task's stages that may run on several processes."""
    return [name for name, stage in task.stages.items() if stage.data_parallel]


def moved_paths(task: Task, name: str, ws) -> dict[str, str]:
    """The stage's inputs and outputs where `ws` puts them elsewhere than the plain workspace does."""
    plain, io = task.workspace(ws.root), task.stages[name].io
    return {key: str(getattr(ws, key)) for key in io.inputs + io.outputs if getattr(ws, key) != getattr(plain, key)}


def launch_command(
    name: str,
    processes: int,
    params_file: Path,
    result_file: Path,
    run_id: str | None,
    paths: dict[str, str] | None = None,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "flows.cli",
        "stage",
        name,
        "--config",
        str(params_file),
        "--result",
        str(result_file),
        *(["--run-id", run_id] if run_id else []),
        *[item for key, path in (paths or {}).items() for item in ("--workspace-path", f"{key}={path}")],
    ]


def launch(task: Task, name: str, p: Params, ws, run_id: str | None) -> StageResult:
    """Run stage `name` on `distributed.processes` processes of this machine; its result, read back."""
    import yaml

    processes = p.distributed.processes
    print(f"  {name}: training on {processes} processes (torchrun)", flush=True)
    # torchrun would pin every process to one thread; share this machine's cores between them instead.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))} | dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="miniaturize-launch-") as tmp:
        params_file, result_file = Path(tmp) / "params.yaml", Path(tmp) / "result.json"
        params_file.write_text(yaml.safe_dump(p.as_dict(), sort_keys=False))
        command = launch_command(name, processes, params_file, result_file, run_id, moved_paths(task, name, ws))
        done = subprocess.run(command, cwd=ws.root, env=env)
        if done.returncode != 0 or not result_file.exists():
            raise RuntimeError(
                f"{name} on {processes} processes failed (torchrun exit code {done.returncode}); "
                "the processes' output is above"
            )
        result = json.loads(result_file.read_text())
    return StageResult(
        metrics=result["metrics"], outputs={k: Path(v) for k, v in result["outputs"].items()}, info=result["info"]
    )


def join(
    task: Task, name: str, p: Params, root: Path, paths: dict[str, Path], run_id: str | None, result_file: Path | None
) -> None:
    """This process's part of a launch (`miniaturize stage NAME --run-id ID --result FILE` under torchrun), on
    the caller's paths for the stage's inputs and outputs: rank 0 runs the stage into the caller's MLflow run
    and hands its result back in `result_file`; every other process trains its share of every batch in step
    with rank 0, and neither logs to MLflow nor writes files (components write on rank 0 only) nor prints."""
    import contextlib

    from components.kit import distributed
    from components.kit.tracking import NullTracker
    from flows import tracking
    from flows.workspace import StagedWorkspace

    ws = StagedWorkspace(task.workspace(root), paths)
    if distributed.world_size() > 1:
        distributed.process_state(p.distributed)  # join the process group before any collective call
    if not distributed.is_main_process():
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            run(task, name, p, ws, NullTracker())
    else:
        tracker = tracking.MlflowTracker(tracking.client(ws.root), run_id) if run_id else NullTracker()
        result = run(task, name, p, ws, tracker)
        if result_file is not None:
            write_result(result, result_file)
    distributed.leave()


def write_result(result: StageResult, path: Path) -> None:
    """What rank 0 hands back to `launch`."""
    path.write_text(
        json.dumps(
            {"metrics": result.metrics, "outputs": {k: str(v) for k, v in result.outputs.items()}, "info": result.info},
            default=str,
        )
    )
