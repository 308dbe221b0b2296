"""The pipeline on a schedule: a Prefect deployment bound to one workspace.

A deployment's runs work in the workspace it was deployed for. The project folder, the params file, the
profile and the `--set` overrides are fixed when deploying and travel inside the flow (`workspace_pipeline`),
not as run parameters: a run triggered from the UI or the API may only choose `until`, the stage to stop
after, so whoever can reach the Prefect server cannot point a run at another folder or file.

Two ways to deploy:
- `miniaturize deploy` (see `flows/cli.py`) builds the deployment and serves it against the Prefect server
  at `PREFECT_API_URL`: the server keeps the cron schedule and creates the runs, this process executes them
  with the bound flow it holds (no work pool or worker needed). Trigger one now with
  `prefect deployment run miniaturize-scheduled/nightly`.
- `prefect deploy` with `prefect.yaml` registers `scheduled_pipeline` below for the work pools: its workspace
  is the working directory that the deployment's pull step sets (`/workspace` in the worker image), with
  params.yaml as written.

Each run reads the params file when it starts, so an edit to params.yaml takes effect at the next run without
re-deploying.

`miniaturize deploy --update FILE` deploys incremental updates instead: each run teaches the champion the
batch FILE holds (`flows.update`), and when FILE holds data the champion has learned already (same sha256)
the run ends within seconds, having changed nothing. Point the schedule at the file new labelled data lands
in (tracked with `dvc add` or `dvc import`), and a changed file is learned at the next run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prefect import Flow, flow, get_run_logger

from flows.run_log import printed_to_run_log

FLOW_NAME = "miniaturize-scheduled"
DEFAULT_NAME = "nightly"
DEFAULT_CRON = "0 2 * * *"  # every night at 02:00
DEFAULT_TIMEZONE = "UTC"


@dataclass(frozen=True)
class BoundWorkspace:
    """What a deployment runs on, chosen when deploying and never by a run."""

    root: str = "."  # the project folder; a relative one is taken from the working directory when a run starts
    params_file: str = "params.yaml"  # relative to root, or absolute
    profile: str | None = None
    overrides: tuple[str, ...] = ()
    update: str | None = None  # a batch file: each run is an incremental update with it, not a pipeline run


def run_in_workspace(workspace: BoundWorkspace, until: str | None = None) -> dict:
    """Load the params, run the pipeline as a subflow (all stages, or up to `until`), record its outputs with
    DVC; return a short summary."""
    from components.config import load_params
    from flows.pipeline import pipeline, registration_cached
    from flows.tasks import task_for
    from flows.versioning import record_run

    root = Path(workspace.root).resolve()
    params_path = root / workspace.params_file  # an absolute params_file stays as is
    overrides = list(workspace.overrides)
    params = load_params(params_path, workspace.profile, overrides)
    if workspace.update is not None:
        return update_in_workspace(params, root, workspace.update)
    outcome = pipeline(params, root=str(root), run_name=time.strftime("scheduled-%Y%m%d-%H%M%S"), until=until)
    dvc = record_run(
        root,
        params_path,
        task_for(params),
        until if outcome["registration"] is None else None,
        "this deployment uses a profile or overrides" if workspace.profile or overrides else None,
        outcome,
    )
    reg = outcome["registration"]
    if reg is None:
        get_run_logger().info(
            "stopped after %s as asked; MLflow run %s in %s", until, outcome["parent_run_id"], outcome["tracking_uri"]
        )
        return {
            "registration": None,
            "stopped_after": until,
            "parent_run_id": outcome["parent_run_id"],
            "tracking_uri": outcome["tracking_uri"],
            "dvc": dvc,
        }
    summary = {
        "registration": {k: reg[k] for k in ("model_name", "version", "alias", "gate_passed", "model_uri")},
        "parent_run_id": outcome["parent_run_id"],
        "tracking_uri": outcome["tracking_uri"],
        "dvc": dvc,
    }
    what = "unchanged, already registered" if registration_cached(task_for(params), outcome) else "registered"
    gate = "passed" if reg["gate_passed"] else "failed: " + ", ".join(reg["failed_checks"])
    get_run_logger().info(
        "%s: %s version %s @%s (gate %s); MLflow run %s in %s; %s",
        what,
        reg["model_name"],
        reg["version"],
        reg["alias"],
        gate,
        outcome["parent_run_id"],
        outcome["tracking_uri"],
        dvc,
    )
    return summary


def update_in_workspace(params, root: Path, data: str) -> dict:
    """One incremental update with the batch `data` (a subflow); nothing but a log line when the champion has
    learned that data already."""
    from flows.update import update

    outcome = update(
        params,
        data=str(root / data) if not data.startswith("vader-") else data,
        root=str(root),
        run_name=time.strftime("scheduled-update-%Y%m%d-%H%M%S"),
    )
    if outcome["skipped"]:
        get_run_logger().info("nothing new in %s: version %s has learned it", data, outcome["version"])
        return {"skipped": True, "version": outcome["version"]}
    get_run_logger().info(
        "update with %s: %s version %s @%s (%s)",
        data,
        outcome["model_name"],
        outcome["version"],
        outcome["alias"],
        outcome["reason"],
    )
    return {k: outcome[k] for k in ("skipped", "model_name", "version", "alias", "reason", "dvc")}


def workspace_pipeline(workspace: BoundWorkspace) -> Flow:
    """The scheduled flow bound to `workspace`. Its only run parameter is `until`; a run given any other
    parameter (`root`, `params_file`, ...) fails its parameter check before anything runs."""

    # Prints reach the Prefect run log through `printed_to_run_log`, standard output unchanged (flows/run_log.py).
    @flow(name=FLOW_NAME, log_prints=False)
    def scheduled_pipeline(until: str | None = None) -> dict:
        """Run the pipeline in the workspace this deployment was made for: every stage, or up to `until`."""
        with printed_to_run_log():
            return run_in_workspace(workspace, until)

    return scheduled_pipeline


# The work-pool deployments of prefect.yaml: the workspace is the working directory their pull step sets.
scheduled_pipeline = workspace_pipeline(BoundWorkspace())


def schedule(cron: str, timezone: str):
    """A Prefect cron schedule; raises ValueError for a bad cron expression or timezone name."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as err:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None


@dataclass(frozen=True)
class ScheduledDeployment:
    """A deployment ready to serve: the flow bound to its workspace and the options Prefect registers it with
    (the keyword arguments of `Flow.to_deployment` and `Flow.serve`)."""

    flow: Flow
    options: dict

    @property
    def name(self) -> str:
        return self.options["name"]

    @property
    def parameters(self) -> dict:
        return self.options["parameters"]

    def to_deployment(self):
        """The deployment as the server will record it (schedule, parameters and their schema, entrypoint)."""
        return self.flow.to_deployment(**self.options)


def build_deployment(
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    root: str | Path = ".",
    params_file: str | Path = "params.yaml",
    profile: str | None = None,
    overrides: list[str] | None = None,
    until: str | None = None,
    update: str | None = None,
) -> ScheduledDeployment:
    """The deployment `<FLOW_NAME>/<name>`: the flow bound to `root` (`params_file` relative to it, or
    absolute), `profile` and `overrides`, on `cron` in `timezone`; `until` is the runs' default stop. With
    `update` (a batch file relative to `root`, or a built-in source) each run is an incremental update."""
    from prefect.flows import EntrypointType

    root, params_file = Path(root).resolve(), Path(params_file)
    if params_file.is_absolute() and params_file.is_relative_to(root):
        params_file = params_file.relative_to(root)  # shown as plain "params.yaml" in the description
    if update is not None and until is not None:
        raise ValueError("an update deployment runs whole updates: --until applies to pipeline runs only")
    workspace = BoundWorkspace(str(root), str(params_file), profile, tuple(overrides or ()), update)
    where = (
        f"{root / params_file}"
        + (f", updates with {update}" if update else "")
        + (f", profile {profile}" if profile else "")
        + (f", --set {' '.join(overrides)}" if overrides else "")
        + (f", up to {until}" if until else "")
    )
    options = dict(
        name=name,
        schedule=schedule(cron, timezone),
        parameters={"until": until},
        tags=["miniaturize", "scheduled"],
        description=(
            f"The miniaturize {'incremental update' if update else 'pipeline'} on {where} (fixed when deployed); "
            "params are read when each run starts."
        ),
        # Reject at creation a run whose parameters do not fit the flow's signature.
        enforce_parameter_schema=True,
        # The entrypoint names the module-level flow; the serving process runs the bound flow it holds.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return ScheduledDeployment(workspace_pipeline(workspace), options)


def serve(deployment: ScheduledDeployment) -> None:
    """Register the deployment with the server at PREFECT_API_URL and execute its runs with the bound flow
    until interrupted. One run at a time: two runs writing the same workspace would overwrite each other's
    files. On Ctrl-C Prefect pauses the schedule; the next `serve` resumes it."""
    deployment.flow.serve(**deployment.options, limit=1, pause_on_shutdown=True, print_starting_message=False)
