"""The miniaturization pipeline as a Prefect flow: the stages of the params' task (`flows.tasks`), in order,
each a Prefect task and an MLflow child run. The runner reads the task's record and names no stage.

Run it with `miniaturize run` (see `flows/cli.py`); `miniaturize stage NAME` runs one stage through the same
`execute_stage` (`run_one_stage`). Without `PREFECT_API_URL` the run starts a temporary
local API that cannot outlive it (`flows/prefect_api.py`); with it, the run shows up on that server. Stages
hand each other files under the workspace (`flows/workspace.py`), which is what DVC versions. A stage whose
content-addressed key (config slice, input files, component source, the key of the stage before it) and
outputs are unchanged since its last run is skipped and logged as a cache hit (`flows/cache.py`);
`miniaturize run --force` runs all.

A run either completes a stage or leaves things as they were: the stage writes into a staging folder, its
outputs are renamed into place when it has finished, and its cache record, which marks it complete, is
written last; a re-run after a crash (even SIGKILL) resumes from the last completed stage. One run at a
time holds the workspace (`flows/lock.py`); the run after one that was killed marks the killed run's Prefect
flow run Crashed and its open MLflow runs KILLED (`settle_killed_runs`). Transient failures are retried,
deterministic ones are not (`flows/retries.py`); a stage that finishes while MLflow is unreachable keeps its
logs for the next run.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.config import Params, section_hash
from components.kit.secrets import redact
from flows import artifacts, cache, launch, prefect_api, stage_metrics, tracking
from flows.lock import killed_runs, note, settled, workspace_lock
from flows.retries import RetryPolicy, TrackingUnavailable, retry_transient, short
from flows.run_log import printed_to_run_log
from flows.stages import Stage, Task, code_files, lookup, stage_config, stage_paths
from flows.tasks import task_for
from flows.workspace import StagedWorkspace, Workspace, move_into_place, staged, staged_paths


@dataclass(frozen=True)
class RunContext:
    """What every stage task needs: the config, where files live, the MLflow runs to log under (a stage run
    on its own has no parent run), and whether unchanged stages may be skipped."""

    params: Params
    workspace: Workspace
    experiment_id: str
    parent_run_id: str | None
    force: bool = False


class StageOutputMissing(RuntimeError):
    """A stage returned without writing an output it declares: a bug in the stage, never recorded as done."""


def stage_key(name: str, params: Params, parent_key: str, ws: Workspace | None = None) -> str:
    """Content address of a stage: its name, its config slice, the key of the stage before it, the hashes of
    the files it reads (when a workspace is given) and of its components' source."""
    task = task_for(params)
    stage = task.stages[name]
    inputs = (stage_paths(ws, stage.io.inputs) | external_inputs(task, stage, params, ws.root)) if ws else {}
    extra = {"registry": tracking.tracking_uri(ws.root)} if ws and stage.registers else {}
    return cache.stage_key(
        name,
        stage_config(params, stage.sections),
        parent_key,
        cache.hashes(inputs),
        cache.hashes(code_files(stage.io.code)),
        extra,
    )


def external_inputs(task: Task, stage: Stage, params: Params, root: Path) -> dict[str, Path]:
    """A user's own data file is an input of the stage that reads it (the built-in archive is checked by its
    sha256)."""
    if not stage.reads_data_source:
        return {}
    named = {task.data_source: lookup(params, task.data_source)} | task.more_data_sources(params)
    return {key: root / path for key, path in named.items() if (root / path).is_file()}


def still_registered(record: cache.Record, client) -> bool:
    """A cached registration counts only while its version still exists in the registry."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(record.info["model_name"], record.info["version"])
        return True
    except (MlflowException, KeyError):
        return False


def policy(params: Params) -> RetryPolicy:
    return RetryPolicy(
        attempts=params.retries.tracking_attempts, backoff_seconds=params.retries.tracking_backoff_seconds
    )


def replay_journal(client, store: cache.StageCache, record: cache.Record, root: Path) -> None:
    """Log what the stage's run could not while MLflow was unreachable, into that same run."""
    print(
        f"[{record.stage}] logging {len(record.journal)} records kept while MLflow was unreachable into run "
        f"{record.run_id}",
        flush=True,
    )
    tracking.replay(client, root, record.run_id, record.journal)
    store.write(replace(record, journal=[]))


# Caching and retry policy live here, in one place. Prefect's own result cache is off: stages pass files,
# and `flows.cache` skips a stage whose content-addressed key and outputs are unchanged. Only transient
# failures are retried (`flows.retries.retry_transient`; attempts and delay from `params.retries`): a data
# or config error would fail the same way again.
@task(task_run_name="{name}", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def run_stage(name: str, ctx: RunContext, parent_key: str) -> dict:
    return execute_stage(name, ctx, parent_key)


def execute_stage(name: str, ctx: RunContext, parent_key: str) -> dict:
    """One stage, start to end, the same for a pipeline run and `miniaturize stage NAME`: skipped when its
    key and outputs are unchanged (unless `ctx.force`), else run in an MLflow run of its own into a staging
    folder, its outputs moved into place and its cache record written last."""
    ws, task = ctx.workspace, task_for(ctx.params)
    stage = task.stages[name]
    client = tracking.client(ws.root, policy(ctx.params))
    store = cache.StageCache(ws.state)
    outputs = stage_paths(ws, stage.io.outputs) | stage_metrics.paths(task, name, ws)  # and its metrics, plot data
    key = stage_key(name, ctx.params, parent_key, ws)
    record = None if ctx.force else reusable(name, stage, key, outputs, store, client, ws.root)
    # A stage run on its own (dvc repro) is a run of its own, named apart from a pipeline's child runs.
    run_name = name if ctx.parent_run_id else f"stage-{name}"
    run_id = tracking.start_run(
        client,
        ctx.experiment_id,
        run_name,
        ctx.parent_run_id,
        tags=run_tags(name, stage, key, parent_key, record, ctx.params),
    )
    tracker = tracking.MlflowTracker(client, run_id, root=ws.root)
    tracker.log_params({"config": stage_config(ctx.params, stage.sections)})
    if record is not None:
        tracker.log_metrics(record.metrics)
        tracking.end_run(client, run_id, True)
        print(
            f"[{name}] unchanged (key {key}): skipped, outputs of run {record.run_id} ({record.finished_at})",
            flush=True,
        )
        return {
            "stage": name,
            "key": key,
            "run_id": run_id,
            "seconds": 0.0,
            "metrics": record.metrics,
            "info": record.info,
            "cache_hit": True,
            "source_run_id": record.run_id,
        }
    # The stage writes into a staging folder; its outputs are renamed into place only once it has finished,
    # and its record (what marks it complete) is written last. A stage killed half-way leaves nothing that
    # a later stage or run could take for its output.
    staging = staging_folder(ws, name)
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left behind
    view = staged(ws, stage.io.outputs, staging)
    tracker.log_datasets(stage_paths(ws, stage.io.inputs).values())  # the run's Datasets panel: the splits it reads
    print(f"[{name}] started", flush=True)
    started = time.perf_counter()
    try:
        result = launch.run(task, name, ctx.params, view, tracker)
        missing = stage.io.missing(view)
        if missing:
            raise StageOutputMissing(
                f"the {name} stage finished without writing {', '.join(missing)} "
                f"({', '.join(str(getattr(view, role)) for role in missing)}): a stage must write every output "
                "it declares (flows/tasks/<task>.py), or nothing could tell its record from a complete one"
            )
    except Exception as err:
        seconds = time.perf_counter() - started
        settle_failure(name, err, view, staging, store, ws.state)
        tracker.log_metrics({"stage_seconds": seconds})
        if not tracker.journal:  # with MLflow gone, the original error is the one to report
            tracking.end_run(client, run_id, False)
        print(f"[{name}] FAILED in {seconds:.1f} s", flush=True)
        raise
    seconds = time.perf_counter() - started
    tracker.log_metrics({"stage_seconds": seconds})
    store.forget(name)
    move_into_place(view.moves, ws.state / "trash")
    shutil.rmtree(staging, ignore_errors=True)
    info = result.info if stage.registers else {}
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if tracker.journal:
        # Complete on disk, not yet in MLflow: record it with its journal, so a re-run replays the logs
        # instead of computing the stage again.
        tracker.journal.append({"kind": "end", "status": "FINISHED"})
        store.store(name, key, outputs, run_id, metrics, info, tracker.journal)
        raise TrackingUnavailable(
            f"the {name} stage finished and its outputs are in place "
            f"({', '.join(outputs)}), but MLflow at "
            f"{redact(tracking.tracking_uri(ws.root))} is unreachable; its logs are kept in "
            f"{tracking.pending_dir(ws.root, run_id)} and the next run logs them without computing it again"
        )
    store.store(name, key, outputs, run_id, metrics, info)
    tracking.end_run(client, run_id, True)
    print(f"[{name}] finished in {seconds:.1f} s", flush=True)
    return {
        "stage": name,
        "key": key,
        "run_id": run_id,
        "seconds": seconds,
        "metrics": metrics,
        "info": info,
        "cache_hit": False,
        "source_run_id": run_id,
    }


def staging_folder(ws: Workspace, name: str) -> Path:
    return ws.state / "staging" / name


def reusable(
    name: str, stage: Stage, key: str, outputs: dict[str, Path], store: cache.StageCache, client, root: Path
) -> cache.Record | None:
    """The stage's record when its key and outputs are unchanged (its logs kept during an MLflow outage
    replayed first); a registration counts only while its version still exists."""
    record = store.lookup(name, key, outputs)
    if record is not None and record.journal:
        replay_journal(client, store, record, root)
    if record is not None and stage.registers and not still_registered(record, client):
        return None
    return record


def run_tags(
    name: str, stage: Stage, key: str, parent_key: str, record: cache.Record | None, params: Params
) -> dict[str, str]:
    """The stage run's tags: its key and lineage, whether it was skipped (and whose outputs it reuses)."""
    tags = {
        "miniaturize.stage": name,
        "miniaturize.stage_key": key,
        "miniaturize.parent_key": parent_key,
        "miniaturize.cache_hit": str(record is not None).lower(),
    }
    if record is not None:
        tags["miniaturize.source_run_id"] = record.run_id
    if stage.data_parallel:
        from components.kit.processes import world_size

        tags["miniaturize.processes"] = str(max(world_size(), params.distributed.processes))
    return tags


def settle_failure(
    name: str, err: Exception, view: StagedWorkspace, staging: Path, store: cache.StageCache, state: Path
) -> None:
    """A failed stage is never recorded as complete. A verdict that comes with its report (data validation)
    moves that report into place for the user to read; other half-written outputs are set aside."""
    store.forget(name)
    report = getattr(err, "report_path", None)
    if report is not None:
        move_into_place(view.moves, state / "trash")
        shutil.rmtree(staging, ignore_errors=True)
        err.report_path = view.real(Path(report))
    elif staging.exists():
        failed = state / "failed" / name
        shutil.rmtree(failed, ignore_errors=True)
        failed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, failed)
        print(f"[{name}] its unfinished outputs are set aside in {failed}; the pipeline never reads them", flush=True)


# What the stages print reaches the Prefect run log through `printed_to_run_log`, which keeps standard output as
# it is; Prefect's log_prints would move it to standard error (flows/run_log.py).
@flow(name="miniaturize", log_prints=False)
def pipeline(
    params: Params,
    root: str = ".",
    run_name: str | None = None,
    force: bool = False,
    until: str | None = None,
    wait_seconds: float = 0.0,
) -> dict:
    """Run the stages in order; `until` stops after that stage (e.g. training on one machine, the rest on
    another that shares the workspace: its run finds the trained stages unchanged and skips them). One run
    at a time per workspace: another one waits `wait_seconds` for the lock, then stops (`flows.lock`)."""
    task = task_for(params)
    if until is not None and until not in task.stages:
        raise ValueError(f"unknown stage {until!r} for until; stages: {', '.join(task.stages)}")
    workspace = task.workspace(Path(root).resolve())
    with (
        printed_to_run_log(),
        workspace_lock(workspace.root, f"miniaturize run {run_name or ''}".strip(), wait_seconds),
    ):
        settle_killed_runs(workspace.root, params)
        # what the next run needs to settle this one if it is killed (the MLflow run is added once created)
        note(workspace.root, **prefect_api.this_flow_run())
        outcome = run_stages(params, workspace, run_name, force, until)
        # the report, the gate's decision and the MLflow links in the Prefect UI (none after --until)
        artifacts.publish_run_report(task.name, workspace, outcome, registration_cached(task, outcome))
        return outcome


def settle_killed_runs(root: Path, params: Params) -> None:
    """Runs killed while they held the workspace (SIGKILL, power loss) never ended their runs: mark each one's
    Prefect flow run Crashed and its MLflow runs still open KILLED, one line each. Their completed stages are
    kept and skipped as usual. What cannot be marked now (an API unreachable) is tried again by the next run."""
    for path, killed in killed_runs(root):
        who = (
            f"{killed.get('what', 'a run')} (pid {killed.get('pid', '?')} on {killed.get('host', '?')}, "
            f"started {killed.get('started', '?')})"
        )
        print(f"{who} was killed before it finished; marking what it left open", flush=True)
        done = True
        if flow_run_id := killed.get("prefect_flow_run_id"):
            try:
                print("  " + prefect_api.crash_flow_run(flow_run_id, f"{who} was killed"), flush=True)
            except Exception as err:  # noqa: BLE001 - bookkeeping of a dead run never stops this one
                done = False
                print(f"  Prefect flow run {flow_run_id}: not marked crashed yet ({short(err, 120)})", flush=True)
        if mlflow_run_id := killed.get("mlflow_run_id"):
            try:
                for run_id in tracking.kill_open_runs(tracking.client(root, policy(params)), mlflow_run_id):
                    print(f"  MLflow run {run_id} marked KILLED", flush=True)
            except Exception as err:  # noqa: BLE001 - as above; an MLflow outage stops the run at its next call
                done = False
                print(f"  MLflow run {mlflow_run_id}: not marked killed yet ({short(err, 120)})", flush=True)
        if done:
            settled(path)


def run_stages(params: Params, workspace: Workspace, run_name: str | None, force: bool, until: str | None) -> dict:
    client = tracking.client(workspace.root, policy(params))
    experiment = tracking.experiment_id(client, workspace.root)
    parent = tracking.start_run(
        client,
        experiment,
        run_name or time.strftime("pipeline-%Y%m%d-%H%M%S"),
        tags={"miniaturize.params_hash": section_hash(params.as_dict())},
    )
    note(workspace.root, mlflow_run_id=parent)
    tracking.MlflowTracker(client, parent).log_params(params.as_dict())
    ctx = RunContext(params, workspace, experiment, parent, force)
    stage = run_stage.with_options(
        retries=params.retries.stage_attempts - 1, retry_delay_seconds=params.retries.stage_delay_seconds
    )
    stages, key, ok = {}, "root", False
    # extract: raw data -> checked splits; transform: teacher -> student -> pruned -> trimmed vocabulary ->
    # ONNX -> int8, then the same chain with further training seeds for the spread; load: measure, gate and
    # register (the stage table is in that order)
    task = task_for(params)
    try:
        for name, spec in task.stages.items():
            stages[name] = stage(name, ctx, stages[spec.after]["key"] if spec.after else key)
            key = stages[name]["key"]
            if name == until:
                break
        ok = True
    finally:
        try:
            tracking.end_run(client, parent, ok)
        except TrackingUnavailable:
            if ok:
                raise
            # MLflow is gone and the run failed anyway: the stage's error says more than this one
    registration = next(
        (stages[name]["info"] for name, s in task.stages.items() if s.registers and name in stages), None
    )
    return {
        "parent_run_id": parent,
        "experiment_id": experiment,
        "stages": stages,
        "registration": registration,
        "tracking_uri": redact(tracking.tracking_uri(workspace.root)),
    }


def registration_cached(task: Task, outcome: dict) -> bool:
    """Whether the run's registering stage was skipped: its model was already registered."""
    return any(stage.get("cache_hit") for name, stage in outcome["stages"].items() if task.stages[name].registers)


def run_one_stage(params: Params, name: str, root: Path) -> dict | None:
    """`miniaturize stage NAME` (what dvc.yaml runs): one stage through `execute_stage`, like a pipeline's, in
    an MLflow run of its own, holding the workspace like a run. It always runs (DVC has decided it must); its
    key chains to the recorded key of the stage before it, so a later pipeline run can skip it.

    Under torchrun started by hand (several machines, WORLD_SIZE set): every process joins the group, rank 0
    runs the stage so, and the others train their share on the same staged paths (`flows.launch.join`)."""
    from components.kit import processes

    task = task_for(params)
    ws = task.workspace(Path(root).resolve())
    launched = processes.world_size() > 1  # only a launch joins a process group (and imports torch for it)
    if launched:
        from components.kit import distributed

        distributed.process_state(params.distributed)  # join the process group before any collective call
        if not processes.is_main_process():
            paths = staged_paths(ws, task.stages[name].io.outputs, staging_folder(ws, name))
            launch.join(task, name, params, ws.root, paths, None, None)
            return None
    with workspace_lock(ws.root, f"miniaturize stage {name}"):
        client = tracking.client(ws.root, policy(params))
        ctx = RunContext(params, ws, tracking.experiment_id(client, ws.root), None, force=True)
        done = execute_stage(name, ctx, recorded_parent_key(task, ws, name))
    if launched:
        distributed.leave()
    return done


def recorded_parent_key(task: Task, ws: Workspace, name: str) -> str:
    """The key the stage `name` chains to (its `after`, or the stage before it) was last completed with
    ("root" before the first stage)."""
    names = list(task.stages)
    if names.index(name) == 0:
        return "root"
    record = cache.StageCache(ws.state).read(task.stages[name].after or names[names.index(name) - 1])
    return record.key if record is not None else "unrecorded"
