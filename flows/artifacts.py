"""A run's report in the Prefect UI: one markdown artifact per pipeline run and per update.

At the end of a `miniaturize` flow run that registered a model (not one stopped by `--until`, nor one that
failed: its flow ends before this), `publish_run_report` creates the artifact `miniaturize-<task>-report`
with the gate's decision (the register stage's: against the teacher and the champion), links to the run's
MLflow run and to the registered model version, and the compression report the evaluate stage wrote, its
tables as they are. The update flow does the same with `miniaturize-<task>-update-report`. Prefect keeps
every version of a key: the Artifacts page shows the latest, each flow run's Artifacts tab its own.

The MLflow links start at the MLflow UI: `MINIATURIZE_MLFLOW_UI_URL` when set, else the tracking URI when it
is an http(s) server (without any credentials in it), else http://127.0.0.1:5000 (what `make ui` serves for
the local store).

`run_report` and `update_report` build the markdown from the files the run wrote (they are what the tests
call); `publish` hands it to Prefect, and a failure there is one printed line, never the run's failure.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit

from components.kit.report import gate_lines
from flows.retries import short

UI_URL_VARIABLE = "MINIATURIZE_MLFLOW_UI_URL"
LOCAL_UI = "http://127.0.0.1:5000"  # `make ui`: the MLflow UI over the project's mlflow.db


def mlflow_ui_url(tracking_uri: str, environ: Mapping[str, str] = os.environ) -> str:
    """Where the MLflow UI of `tracking_uri` is, without a trailing slash (see the module)."""
    if environ.get(UI_URL_VARIABLE):
        return environ[UI_URL_VARIABLE].rstrip("/")
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        host = parts.netloc.rpartition("@")[2]  # user and password stay out of the link
        return f"{parts.scheme}://{host}{parts.path}".rstrip("/")
    return LOCAL_UI


def run_url(ui: str, run_id: str, experiment_id: str | None = None) -> str:
    # The MLflow UI also opens a run by its id alone, redirecting to its experiment.
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"{ui}/#/runs/{run_id}"


def model_url(ui: str, name: str, version: str) -> str:
    return f"{ui}/#/models/{quote(name, safe='')}/versions/{version}"


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def report_body(markdown: str) -> str:
    """A stage's markdown report under the artifact's own headings: its own gate section left out (the
    artifact shows the register stage's, which holds the same checks and the champion's), every heading one
    level down."""
    body = re.sub(r"^## Gate: .*?(?=^## |\Z)", "", markdown, flags=re.S | re.M)
    return re.sub(r"^(#{1,5}) ", r"#\1 ", body, flags=re.M).strip()


def run_report(task_name: str, report_md: Path, registration_file: Path, outcome: dict, cached: bool) -> str | None:
    """The artifact of a pipeline run (`outcome`: what `flows.pipeline.pipeline` returns), from its markdown
    report and its registration record; None when the run registered nothing (`--until`) or either file is
    missing. `cached`: the register stage was skipped, its model registered by an earlier run."""
    if outcome.get("registration") is None or not report_md.is_file() or not registration_file.is_file():
        return None
    reg = json.loads(registration_file.read_text())
    ui = mlflow_ui_url(outcome["tracking_uri"])
    name, version, alias = reg["model_name"], reg["version"], reg["alias"]
    if cached:
        verdict = f"Unchanged model: already registered as {name} version {version} (@{alias} then)."
    elif reg["gate_passed"]:
        verdict = f"Gate passed: {name} version {version} is now @{alias}."
    else:
        verdict = f"Gate FAILED ({', '.join(reg['failed_checks'])}): {name} version {version} is @{alias}."
    skipped = [stage for stage, done in outcome["stages"].items() if done.get("cache_hit")]
    lines = [
        f"# miniaturize {task_name}: {name} version {version}",
        "",
        verdict,
        "",
        f"- MLflow run: [{outcome['parent_run_id']}]"
        f"({run_url(ui, outcome['parent_run_id'], outcome.get('experiment_id'))})",
        f"- Model version: [{name} version {version}]({model_url(ui, name, version)}) (`{reg['model_uri']}`)",
        f"- Report: `{report_md}`",
    ]
    if skipped:
        lines.append(f"- Unchanged, skipped: {', '.join(skipped)} ({len(skipped)} of {len(outcome['stages'])} stages)")
    lines += gate_lines(reg["gate"])
    return "\n".join(lines) + "\n\n" + report_body(report_md.read_text()) + "\n"


def update_report(task_name: str, outcome: dict) -> str | None:
    """The artifact of an update (`outcome`: what `flows.update.update` returns), from its markdown report;
    None when the update had nothing new to learn or the report is missing."""
    report_md = outcome.get("report_md")
    if outcome.get("skipped") or report_md is None or not Path(report_md).is_file():
        return None
    ui = mlflow_ui_url(outcome["tracking_uri"])
    name, version = outcome["model_name"], outcome["version"]
    lines = [
        f"# miniaturize update, {task_name}: {name} version {version}",
        "",
        f"{outcome['reason'][:1].upper()}{outcome['reason'][1:]}: {name} version {version} (from version "
        f"{outcome['parent_version']}, batch {outcome['batch']}) is @{outcome['alias']}.",
        "",
        f"- MLflow run: [{outcome['run_id']}]({run_url(ui, outcome['run_id'])})",
        f"- Model version: [{name} version {version}]({model_url(ui, name, version)}) (`models:/{name}/{version}`)",
        f"- Report: `{report_md}`",
    ]
    return "\n".join(lines) + "\n\n" + report_body(Path(report_md).read_text()) + "\n"


def publish(key: str, build, description: str) -> None:
    """Create the markdown artifact `key` from `build()` (nothing when it returns None). Whatever fails here
    (a report that cannot be read, the Prefect API) is one printed line: the run has done its work."""
    try:
        markdown = build()
        if markdown is None:
            return
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as err:  # noqa: BLE001 - the UI's copy of a report never fails a run
        print(f"Prefect artifact {key} not created: {short(err)}", flush=True)


def publish_run_report(task_name: str, ws, outcome: dict, cached: bool) -> None:
    """The pipeline run's artifact, `miniaturize-<task>-report` (`ws`: the task's workspace)."""
    publish(
        artifact_key("miniaturize", task_name, "report"),
        lambda: run_report(task_name, ws.report_md, ws.registration, outcome, cached),
        f"miniaturize {task_name}: the compression report, the gate's decision, MLflow links",
    )


def publish_update_report(task_name: str, outcome: dict) -> None:
    """The update's artifact, `miniaturize-<task>-update-report`."""
    publish(
        artifact_key("miniaturize", task_name, "update-report"),
        lambda: update_report(task_name, outcome),
        f"miniaturize update, {task_name}: the per-batch report, the forgetting gate's decision, MLflow links",
    )
