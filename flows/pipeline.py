"""The miniaturization pipeline as a Prefect flow: eleven stages, each a task and an MLflow child run.

Run it with `miniaturize run` (see `flows/cli.py`). Without `PREFECT_API_URL` Prefect starts a temporary
local API for the run; with it, the run shows up on that server. Stages hand each other files under the
workspace (`flows/workspace.py`), which is what DVC versions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.config import Params, section_hash
from flows import tracking
from flows.stages import STAGES, stage_config
from flows.workspace import Workspace


@dataclass(frozen=True)
class RunContext:
    """What every stage task needs: the config, where files live, and the MLflow runs to log under."""

    params: Params
    workspace: Workspace
    experiment_id: str
    parent_run_id: str


def stage_key(name: str, params: Params, parent_key: str) -> str:
    """Content address of a stage: its name, its config slice and the key of the stage before it."""
    return section_hash({"stage": name, "config": stage_config(params, name), "parent": parent_key})


# Retries and caching policy live here, in one place: stage failures are not retried blindly (a data or
# config error would fail the same way again), and Prefect's result cache is off because stages pass files.
@task(task_run_name="{name}", cache_policy=NO_CACHE, retries=0)
def run_stage(name: str, ctx: RunContext, parent_key: str) -> dict:
    client = tracking.client(ctx.workspace.root)
    key = stage_key(name, ctx.params, parent_key)
    run_id = tracking.start_run(client, ctx.experiment_id, name, ctx.parent_run_id,
                                tags={"miniaturize.stage": name, "miniaturize.stage_key": key,
                                      "miniaturize.parent_key": parent_key, "miniaturize.cache_hit": "false"})
    tracker = tracking.MlflowTracker(client, run_id)
    tracker.log_params({"config": stage_config(ctx.params, name)})
    print(f"[{name}] started", flush=True)
    started = time.perf_counter()
    ok = False
    try:
        result = STAGES[name](ctx.params, ctx.workspace, tracker)
        ok = True
    finally:
        seconds = time.perf_counter() - started
        tracker.log_metrics({"stage_seconds": seconds})
        tracking.end_run(client, run_id, ok)
        print(f"[{name}] {'finished' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)
    return {"stage": name, "key": key, "run_id": run_id, "seconds": seconds, "metrics": result.metrics,
            "info": result.info if name == "register" else {}}


@flow(name="miniaturize", log_prints=False)
def pipeline(params: Params, root: str = ".", run_name: str | None = None) -> dict:
    workspace = Workspace(Path(root).resolve())
    client = tracking.client(workspace.root)
    experiment = tracking.experiment_id(client, workspace.root)
    parent = tracking.start_run(client, experiment, run_name or time.strftime("pipeline-%Y%m%d-%H%M%S"),
                                tags={"miniaturize.params_hash": section_hash(params.as_dict())})
    tracking.MlflowTracker(client, parent).log_params(params.as_dict())
    ctx = RunContext(params, workspace, experiment, parent)
    stages, key, ok = {}, "root", False
    try:
        # extract: raw data -> checked splits
        for name in ("ingest", "validate"):
            stages[name] = run_stage(name, ctx, key)
            key = stages[name]["key"]
        # transform: teacher -> student -> pruned -> trimmed vocabulary -> ONNX -> int8, then the same chain
        # with further training seeds for the spread
        for name in ("finetune", "distill", "prune", "trim", "export", "quantize", "seeds"):
            stages[name] = run_stage(name, ctx, key)
            key = stages[name]["key"]
        # load: measure, gate and register
        for name in ("evaluate", "register"):
            stages[name] = run_stage(name, ctx, key)
            key = stages[name]["key"]
        ok = True
    finally:
        tracking.end_run(client, parent, ok)
    return {"parent_run_id": parent, "experiment_id": experiment, "stages": stages,
            "registration": stages["register"]["info"], "tracking_uri": tracking.tracking_uri(workspace.root)}
