"""The pipeline on a schedule: a Prefect deployment served by a long-running local process.

`miniaturize deploy` (see `flows/cli.py`) builds the deployment and serves it against the Prefect server at
`PREFECT_API_URL`: the server keeps the cron schedule and creates the runs, this process executes them (no
work pool or worker needed). Each run reads the params file when it starts, so an edit to params.yaml takes
effect at the next run without re-deploying. Trigger one now with
`prefect deployment run miniaturize-scheduled/nightly`.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger

FLOW_NAME = "miniaturize-scheduled"
DEFAULT_NAME = "nightly"
DEFAULT_CRON = "0 2 * * *"  # every night at 02:00
DEFAULT_TIMEZONE = "UTC"


@flow(name=FLOW_NAME, log_prints=False)
def scheduled_pipeline(root: str, params_file: str = "params.yaml", profile: str | None = None,
                       overrides: list[str] | None = None, until: str | None = None) -> dict:
    """Load the params, run the pipeline as a subflow (all stages, or up to `until`), record its outputs with
    DVC; return a short summary."""
    from components.config import load_params
    from flows.pipeline import pipeline
    from flows.versioning import commit_outputs, dvc_stages

    overrides = list(overrides or [])
    params = load_params(Path(root) / params_file, profile, overrides)  # an absolute params_file stays as is
    outcome = pipeline(params, root=root, run_name=time.strftime("scheduled-%Y%m%d-%H%M%S"), until=until)
    # Only a run of params.yaml as written is what dvc.lock describes (the same rule as `miniaturize run`),
    # and only a complete one: after a partial run the later stages' outputs are from an older run.
    if profile or overrides:
        dvc = "DVC: not recorded (this deployment uses a profile or overrides)"
    elif outcome["registration"] is None:
        dvc = f"DVC: not recorded (the run stopped after {until})"
    else:
        dvc = commit_outputs(Path(root), dvc_stages(Path(root), Path(root) / params_file, params.task))[1]
    reg = outcome["registration"]
    if reg is None:
        get_run_logger().info("stopped after %s as asked; MLflow run %s in %s", until, outcome["parent_run_id"],
                              outcome["tracking_uri"])
        return {"registration": None, "stopped_after": until, "parent_run_id": outcome["parent_run_id"],
                "tracking_uri": outcome["tracking_uri"], "dvc": dvc}
    summary = {"registration": {k: reg[k] for k in ("model_name", "version", "alias", "gate_passed", "model_uri")},
               "parent_run_id": outcome["parent_run_id"], "tracking_uri": outcome["tracking_uri"], "dvc": dvc}
    what = "unchanged, already registered" if outcome["stages"]["register"].get("cache_hit") else "registered"
    gate = "passed" if reg["gate_passed"] else "failed: " + ", ".join(reg["failed_checks"])
    get_run_logger().info("%s: %s version %s @%s (gate %s); MLflow run %s in %s; %s", what, reg["model_name"],
                          reg["version"], reg["alias"], gate, outcome["parent_run_id"], outcome["tracking_uri"], dvc)
    return summary


def schedule(cron: str, timezone: str):
    """A Prefect cron schedule; raises ValueError for a bad cron expression or timezone name."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as err:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None


def build_deployment(name: str = DEFAULT_NAME, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE,
                     root: str | Path = ".", params_file: str | Path = "params.yaml", profile: str | None = None,
                     overrides: list[str] | None = None, until: str | None = None):
    """The deployment `<FLOW_NAME>/<name>`: the flow on `cron` in `timezone`, with these run parameters
    (`params_file` relative to `root`, or absolute)."""
    from prefect.flows import EntrypointType

    root, params_file = Path(root).resolve(), Path(params_file)
    if params_file.is_absolute() and params_file.is_relative_to(root):
        params_file = params_file.relative_to(root)  # shown as plain "params.yaml" in the UI
    parameters = {"root": str(root), "params_file": str(params_file), "profile": profile,
                  "overrides": list(overrides or []), "until": until}
    where = f"{root / params_file}" + (f", profile {profile}" if profile else "") + \
        (f", --set {' '.join(overrides)}" if overrides else "") + (f", up to {until}" if until else "")
    return scheduled_pipeline.to_deployment(
        name=name, schedule=schedule(cron, timezone), parameters=parameters, tags=["miniaturize", "scheduled"],
        description=f"The miniaturize pipeline on {where}; params are read when each run starts.",
        # Runs import the flow from the installed package, whichever directory `deploy` was started in.
        entrypoint_type=EntrypointType.MODULE_PATH)


def serve(deployment) -> None:
    """Register the deployment with the server at PREFECT_API_URL and execute its runs until interrupted.
    One run at a time: two runs writing the same workspace would overwrite each other's files. On Ctrl-C
    Prefect pauses the schedule; the next `serve` resumes it."""
    import prefect

    prefect.serve(deployment, limit=1, print_starting_message=False)
