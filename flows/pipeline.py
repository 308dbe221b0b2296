"""The miniaturization pipeline as a Prefect flow: eleven stages, each a task and an MLflow child run.

Run it with `miniaturize run` (see `flows/cli.py`). Without `PREFECT_API_URL` Prefect starts a temporary
local API for the run; with it, the run shows up on that server. Stages hand each other files under the
workspace (`flows/workspace.py`), which is what DVC versions. A stage whose content-addressed key (config
slice, input files, component source, the key of the stage before it) and outputs are unchanged since its
last run is skipped and logged as a cache hit (`flows/cache.py`); `miniaturize run --force` runs all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.config import Params, section_hash
from flows import cache, tracking
from flows.stages import code_files, stage_config, stage_paths, stage_table
from flows.workspace import Workspace, workspace_for


@dataclass(frozen=True)
class RunContext:
    """What every stage task needs: the config, where files live, the MLflow runs to log under, and whether
    unchanged stages may be skipped."""

    params: Params
    workspace: Workspace
    experiment_id: str
    parent_run_id: str
    force: bool = False


def stage_key(name: str, params: Params, parent_key: str, ws: Workspace | None = None) -> str:
    """Content address of a stage: its name, its config slice, the key of the stage before it, the hashes of
    the files it reads (when a workspace is given) and of its components' source."""
    io = stage_table(params.task).io[name]
    inputs = cache.hashes(stage_paths(ws, io.inputs) | external_inputs(name, params)) if ws else {}
    extra = {"registry": tracking.tracking_uri(ws.root)} if ws and name == "register" else {}
    return cache.stage_key(name, stage_config(params, name), parent_key, inputs, cache.hashes(code_files(io.code)),
                           extra)


def external_inputs(name: str, params: Params) -> dict[str, Path]:
    """A user's own data file is an input of ingest (the built-in archive is checked by its sha256)."""
    source = Path(params.lm.data.source if params.task == "causal-lm" else params.data.source)
    return {"data.source": source} if name == "ingest" and source.is_file() else {}


def still_registered(record: cache.Record, client) -> bool:
    """A cached registration counts only while its version still exists in the registry."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(record.info["model_name"], record.info["version"])
        return True
    except (MlflowException, KeyError):
        return False


# Retries and caching policy live here, in one place: stage failures are not retried blindly (a data or
# config error would fail the same way again), and Prefect's own result cache is off: stages pass files,
# and `flows.cache` skips a stage whose content-addressed key and outputs are unchanged.
@task(task_run_name="{name}", cache_policy=NO_CACHE, retries=0)
def run_stage(name: str, ctx: RunContext, parent_key: str) -> dict:
    ws = ctx.workspace
    client = tracking.client(ws.root)
    store = cache.StageCache(ws.root)
    table = stage_table(ctx.params.task)
    outputs = stage_paths(ws, table.io[name].outputs)
    key = stage_key(name, ctx.params, parent_key, ws)
    record = None if ctx.force else store.lookup(name, key, outputs)
    if record is not None and name == "register" and not still_registered(record, client):
        record = None
    tags = {"miniaturize.stage": name, "miniaturize.stage_key": key, "miniaturize.parent_key": parent_key,
            "miniaturize.cache_hit": str(record is not None).lower()}
    if record is not None:
        tags["miniaturize.source_run_id"] = record.run_id
    run_id = tracking.start_run(client, ctx.experiment_id, name, ctx.parent_run_id, tags=tags)
    tracker = tracking.MlflowTracker(client, run_id)
    tracker.log_params({"config": stage_config(ctx.params, name)})
    if record is not None:
        tracker.log_metrics(record.metrics)
        tracking.end_run(client, run_id, True)
        print(f"[{name}] unchanged (key {key}): skipped, outputs of run {record.run_id} ({record.finished_at})",
              flush=True)
        return {"stage": name, "key": key, "run_id": run_id, "seconds": 0.0, "metrics": record.metrics,
                "info": record.info, "cache_hit": True, "source_run_id": record.run_id}
    print(f"[{name}] started", flush=True)
    started = time.perf_counter()
    ok = False
    try:
        result = table.stages[name](ctx.params, ws, tracker)
        ok = True
    finally:
        seconds = time.perf_counter() - started
        tracker.log_metrics({"stage_seconds": seconds})
        tracking.end_run(client, run_id, ok)
        print(f"[{name}] {'finished' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)
    info = result.info if name == "register" else {}
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    store.store(name, key, outputs, run_id, metrics, info)
    return {"stage": name, "key": key, "run_id": run_id, "seconds": seconds, "metrics": metrics, "info": info,
            "cache_hit": False, "source_run_id": run_id}


@flow(name="miniaturize", log_prints=False)
def pipeline(params: Params, root: str = ".", run_name: str | None = None, force: bool = False,
             until: str | None = None) -> dict:
    """Run the stages in order; `until` stops after that stage (e.g. training on one machine, the rest on
    another that shares the workspace: its run finds the trained stages unchanged and skips them)."""
    stages_in_order = stage_table(params.task).stages
    if until is not None and until not in stages_in_order:
        raise ValueError(f"unknown stage {until!r} for until; stages: {', '.join(stages_in_order)}")
    workspace = workspace_for(params.task, Path(root).resolve())
    client = tracking.client(workspace.root)
    experiment = tracking.experiment_id(client, workspace.root)
    parent = tracking.start_run(client, experiment, run_name or time.strftime("pipeline-%Y%m%d-%H%M%S"),
                                tags={"miniaturize.params_hash": section_hash(params.as_dict())})
    tracking.MlflowTracker(client, parent).log_params(params.as_dict())
    ctx = RunContext(params, workspace, experiment, parent, force)
    stages, key, ok = {}, "root", False
    # extract: raw data -> checked splits; transform: teacher -> student -> pruned -> trimmed vocabulary ->
    # ONNX -> int8, then the same chain with further training seeds for the spread; load: measure, gate and
    # register (the stage table is in that order)
    try:
        for name in stages_in_order:
            stages[name] = run_stage(name, ctx, key)
            key = stages[name]["key"]
            if name == until:
                break
        ok = True
    finally:
        tracking.end_run(client, parent, ok)
    return {"parent_run_id": parent, "experiment_id": experiment, "stages": stages,
            "registration": stages["register"]["info"] if "register" in stages else None,
            "tracking_uri": tracking.tracking_uri(workspace.root)}
