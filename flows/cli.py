"""The `miniaturize` command line.

    miniaturize run [--profile smoke] [--data FILE] [--set key=value ...] [--force] [--until STAGE] [--wait S]
    miniaturize stage NAME [--processes N]                                    # one stage (what dvc.yaml runs)
    miniaturize update --data FILE [--profile smoke] [--set key=value ...]   # teach the champion a new batch
    miniaturize federate [--from models:/NAME@champion] [--set federated.rounds=10]  # fine-tune across clients (Flower)
    miniaturize search [--profile smoke] [--set key=value ...]               # candidates, Pareto front, best one
    miniaturize package [--model models:/NAME@champion] --out DIR [--force]  # edge bundle with predict.py
    miniaturize serve-model DIR|models:/NAME@champion [--port 8000]          # the bundle over HTTP: /predict, /health
    miniaturize promote --version N [--force --reason TEXT] [--data FILE]     # champion through the gate
    miniaturize rollback [--reason TEXT] [--data FILE]                        # champion back to the previous one
    miniaturize lineage N [--data FILE]                                       # commit, data, params, stage keys, updates
    miniaturize bench [--repeats 3]                                           # re-measure the report's models
    miniaturize deploy [--cron "0 2 * * *"] [--name nightly] [--timezone UTC] # the pipeline on a schedule (Prefect)
    miniaturize deploy --update FILE [--cron ...] [--name weekly-update]     # an update with FILE on a schedule

Every command answers with the same exit codes (`EXIT_CODES`, listed by `miniaturize --help`); an
unexpected error prints its traceback and exits 1. The commands parse their options, call into flows/ and
map errors to exit codes; what differs between tasks comes from the params' task record (`flows.tasks`).
The registered model a command acts on is the params' `registered_model_name` (named after the task's data
unless `register.model_name` is set): `promote`, `rollback` and `lineage` take the `--data` a run was given,
to act on that data's model.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

EXIT_CODES = {
    0: "done",
    1: "unexpected error (traceback printed) or a stage failed",
    2: "bad params, input path, unreadable data or unknown model version",
    3: "data validation failed",
    4: "the gate refused a promotion, or nothing to roll back to",
    5: "another run holds the workspace",
    6: "the MLflow tracking server did not answer (after retries; finished stages are kept)",
}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Turn a large transformer into a small, fast, validated int8 ONNX model.",
    epilog="Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()) + ".",
)

# Quiet, offline-friendly defaults; an ephemeral Prefect API on a busy 2-core machine can take over 20 s.
QUIET_ENV = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "DO_NOT_TRACK": "1",
}


@app.callback()
def environment_defaults() -> None:
    # Runs before every command: the one place the environment defaults are set (a value already set wins).
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


# Options that several commands take, declared once; the default params file is named once too.
PARAMS_FILE = Path("params.yaml")
ParamsOpt = Annotated[Path, typer.Option("--params", "--config", help="Params file, e.g. configs/causal-lm.yaml.")]
ProfileOpt = Annotated[
    Optional[str], typer.Option("--profile", help="Named override set from params.yaml, e.g. smoke.")
]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one value: key=value (repeatable).")]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="Stop after this stage, e.g. prune (training only).")]
WaitOpt = Annotated[
    float,
    typer.Option("--wait", help="Seconds to wait for another run in this workspace to finish (default: stop at once)."),
]
ReasonOpt = Annotated[Optional[str], typer.Option("--reason", help="Why; recorded with the alias move.")]
DataOpt = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="The data file the model learned, as `run --data` had it: act on that data's model (named after it).",
    ),
]
# figures --write: the page whose task section the measured figures replace.
PageOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--write",
        help="Replace the task's section in this Markdown page (appended when the page has none) instead of printing it.",
    ),
]


def fail(message: str, code: int) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class NoTracebackFor(logging.Filter):
    """Keeps Prefect's one-line log of a failed flow run but drops the traceback for bad input, which the
    CLI explains itself."""

    def __init__(self, *kinds: type[BaseException]):
        super().__init__()
        self.kinds = kinds

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.kinds):
            record.exc_info, record.exc_text = None, None
        return True


def raised(err: BaseException, module: str, *names: str) -> bool:
    """Whether `err` is one of `module`'s exception classes `names`. A module not imported yet cannot have
    raised one, and importing it only to ask would cost seconds (mlflow, Prefect) on an error found at once."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(err, tuple(getattr(loaded, name) for name in names))


def exit_code(err: BaseException, what: str) -> tuple[int, str]:
    """The exit code and the message for an error a command raised (see EXIT_CODES)."""
    if raised(err, "components.validate", "ValidationFailed"):
        report = getattr(err, "report_path", None)
        return 3, f"\n{err}\n\nFull validation result: {report}\nNothing was trained or registered."
    if (
        isinstance(err, FileNotFoundError)
        or raised(err, "components.config", "ConfigError")
        or raised(err, "components.kit.data", "DataError")
        or raised(err, "components.bundle", "BundleSourceError", "OutDirRefused")
        or raised(err, "components.serve", "BundleError")
        or raised(err, "flows.update", "NoWarmStart")
    ):
        return 2, f"error: {err}"
    if raised(err, "mlflow.exceptions", "MlflowException") and err.error_code in (
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_PARAMETER_VALUE",
    ):
        return 2, f"error: {err.message}"
    if raised(err, "flows.registry", "GateRejected") or raised(err, "components.kit.promotion", "RollbackError"):
        return 4, f"refused: {err}"
    if raised(err, "flows.lock", "WorkspaceLocked"):
        return 5, f"error: {err}"
    if raised(err, "flows.retries", "TrackingUnavailable"):
        return 6, f"error: {what} stopped: {err}"
    return 1, f"error: {what} failed: {type(err).__name__}: {err}"


@contextmanager
def exit_codes(what: str):
    """Every command's errors as one exit code and message; an unexpected one also prints its traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as err:  # noqa: BLE001 - classified by exit_code
        code, message = exit_code(err, what)
        if code == 1:
            traceback.print_exc()
        fail(message, code)


def run_flow(flow_fn, params, root: Path, what: str, **options) -> tuple[dict, float]:
    """Run a Prefect flow with the exit codes of every command. Returns its result and the minutes it took."""
    from components.kit.data import DataError
    from components.validate import ValidationFailed
    from flows.lock import WorkspaceLocked
    from flows.retries import TrackingUnavailable

    # Prefect logs the traceback of a failed flow run; for bad input the CLI's one line says more.
    logging.getLogger("prefect.flow_runs").addFilter(
        NoTracebackFor(DataError, ValidationFailed, WorkspaceLocked, TrackingUnavailable)
    )
    from flows.prefect_api import temporary_api

    started = time.perf_counter()
    with exit_codes(what), temporary_api():  # a temporary Prefect API that cannot outlive this process
        outcome = flow_fn(params, root=str(root), **options)
    return outcome, (time.perf_counter() - started) / 60


def check_stage(name: str | None, task) -> None:
    if name is not None and name not in task.stages:
        fail(f"error: unknown stage {name!r}; stages: {', '.join(task.stages)}", 2)


def load(params_file: Path, profile: str | None, overrides: list[str]):
    from components.config import ConfigError, load_params

    try:
        return load_params(params_file, profile, overrides)
    except ConfigError as err:
        fail(f"error: {err}", 2)


def load_task(params_file: Path, profile: str | None = None, overrides: list[str] | None = None):
    """(params, the record of their task)."""
    from flows.tasks import task_for

    params = load(params_file, profile, list(overrides or []))
    return params, task_for(params)


def load_with_data(params_file: Path, profile: str | None, overrides: list[str] | None, data: str | None, what: str):
    """(params, task) with `data` (a `--data` value) as the task's data source, checked like a run's: the model
    a command acts on is named after that data (`Params.registered_model_name`)."""
    params, task = load_task(params_file, profile, overrides)
    if data:
        from flows.preflight import data_source

        with exit_codes(what):  # fail here, before anything starts: a missing file, or one outside the project
            override = f"{task.data_source}={data_source(data, Path.cwd())}"
        params = load(params_file, profile, [*(overrides or []), override])
    return params, task


def preflight(task, params, search: bool = False) -> None:
    """Check the params against the teacher model (path, hub reachability, depth) before anything runs."""
    from components.config import ConfigError

    try:
        task.preflight(params, Path.cwd(), search)
    except ConfigError as err:
        fail(f"error: {err}", 2)


@app.command()
def run(
    params_file: ParamsOpt = PARAMS_FILE,
    profile: ProfileOpt = None,
    data: Annotated[
        Optional[str], typer.Option("--data", help="CSV/JSONL/Parquet with text,label, or a hub dataset id.")
    ] = None,
    overrides: SetOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run every stage, even those whose inputs, code and config are unchanged.")
    ] = False,
    until: UntilOpt = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Run the whole pipeline: ingest, validate, finetune, distill, prune, trim, export, quantize, seeds, evaluate, register.

    A stage whose inputs, component code and config slice are unchanged since its last run is skipped."""
    params, task = load_with_data(params_file, profile, overrides, data, "run")
    check_stage(until, task)
    preflight(task, params)
    root = Path.cwd()
    from flows.pipeline import pipeline
    from flows.versioning import record_run

    outcome, minutes = run_flow(pipeline, params, root, "pipeline", force=force, until=until, wait_seconds=wait)
    if outcome["registration"] is None:
        typer.secho(f"\nminiaturize: stopped after {until} as asked, in {minutes:.1f} min", bold=True)
        typer.echo(f"  MLflow:  {outcome['tracking_uri']}  run {outcome['parent_run_id']}")
        typer.echo(record_run(root, params_file, task, until, None))
        return
    print_summary(task, root, outcome, minutes)
    customised = f"this run used --profile/--set/--data; put the values in {params_file} to version them"
    typer.echo(record_run(root, params_file, task, None, customised if profile or overrides or data else None, outcome))


def print_summary(task, root: Path, outcome: dict, minutes: float) -> None:
    import json

    from flows.pipeline import registration_cached

    ws = task.workspace(root)
    reg = outcome["registration"]
    report = json.loads(ws.report.read_text())
    typer.echo("")
    typer.secho(f"miniaturize: pipeline finished in {minutes:.1f} min", bold=True)
    skipped = [name for name, stage in outcome["stages"].items() if stage.get("cache_hit")]
    if skipped:
        typer.echo(
            f"  unchanged, skipped: {', '.join(skipped)} ({len(skipped)} of {len(outcome['stages'])} stages; "
            "--force runs all)"
        )
    for line in task.summary(report):
        typer.echo(line)
    gate = "passed" if reg["gate_passed"] else "FAILED (" + ", ".join(reg["failed_checks"]) + ")"
    if registration_cached(task, outcome):
        typer.echo(
            f"  gate {gate}: unchanged model, already registered as {reg['model_name']} version {reg['version']}"
        )
    else:
        typer.echo(f"  gate {gate}: {reg['model_name']} version {reg['version']} is now @{reg['alias']}")
    typer.echo(f"  report:  {ws.report_md} (+ {task.report_files})")
    typer.echo(
        f"  MLflow:  {outcome['tracking_uri']}  experiment {outcome['experiment_id']}, "
        f"run {outcome['parent_run_id']}  (make ui -> http://127.0.0.1:5000)"
    )
    typer.echo(f"  model:   {reg['model_uri']}  (models:/{reg['model_name']}@{reg['alias']})")


@app.command()
def update(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="The new labelled batch: a CSV/JSONL/Parquet file of the project (text,label), or a built-in source (vader-amazon, vader-tweets, vader-nyt).",
        ),
    ],
    params_file: ParamsOpt = PARAMS_FILE,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    wait: WaitOpt = 0.0,
    start: Annotated[
        Optional[str],
        typer.Option(
            "--from", help="Update this version instead of the champion: models:/NAME/VERSION or models:/NAME@ALIAS."
        ),
    ] = None,
) -> None:
    """Teach the @champion version a new labelled batch: its teacher and compressed student warm-started, replay
    and distillation against forgetting, every earlier batch re-measured, the forgetting gate, a new version."""
    params, task = load_task(params_file, profile, overrides)
    from flows import update as updating

    if task is not updating.TASK:
        fail(f"error: miniaturize update learns {updating.TASK.name} models; {params_file} sets task {task.name}", 2)
    from flows.preflight import data_source

    with exit_codes("update"):
        source = data_source(data, Path.cwd())
    outcome, minutes = run_flow(
        updating.update, params, Path.cwd(), "update", data=source, wait_seconds=wait, start=start
    )
    typer.echo("")
    if outcome["skipped"]:
        typer.secho(
            f"miniaturize: nothing new in {data}: version {outcome['version']} has learned it (batch "
            f"{outcome['batch']}); {minutes * 60:.0f} s",
            bold=True,
        )
        return
    echo_new_version("update", outcome, updating.render_markdown(outcome["report"]), minutes)


def echo_new_version(what: str, outcome: dict, markdown: str, minutes: float) -> None:
    """What an update or a federation registered: its report's lines, the version and alias, where to look next."""
    typer.secho(f"miniaturize: {what} finished in {minutes:.1f} min", bold=True)
    for line in markdown.splitlines()[2:]:
        if line:
            typer.echo(f"  {line}")
    typer.echo(
        f"  {outcome['model_name']} version {outcome['version']} (parent {outcome['parent_version']}) is now "
        f"@{outcome['alias']}: {outcome['reason']}"
    )
    typer.echo(f"  report:  {outcome['report_md']}")
    typer.echo(f"  MLflow:  {outcome['tracking_uri']}  run {outcome['run_id']}")
    typer.echo(f"  {outcome['dvc']}")
    typer.echo(f"  lineage: miniaturize lineage {outcome['version']}")


@app.command()
def federate(
    params_file: ParamsOpt = PARAMS_FILE,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    wait: WaitOpt = 0.0,
    start: Annotated[
        Optional[str],
        typer.Option(
            "--from",
            help="Federate this version's student instead of the champion's: models:/NAME/VERSION or models:/NAME@ALIAS.",
        ),
    ] = None,
) -> None:
    """Fine-tune the @champion's compressed student across clients that keep their data (Flower: a SuperLink and one
    SuperNode per client on loopback, all stopped at the end), then export, quantize, gate and register it."""
    params, task = load_task(params_file, profile, overrides)
    from flows import federate as federating

    if task is not federating.TASK:
        fail(
            f"error: miniaturize federate federates {federating.TASK.name} models; {params_file} sets task {task.name}",
            2,
        )
    outcome, minutes = run_flow(federating.federate, params, Path.cwd(), "federate", wait_seconds=wait, start=start)
    typer.echo("")
    echo_new_version("federation", outcome, federating.render_markdown(outcome["report"]), minutes)


@app.command("incremental-demo")
def incremental_demo(
    params_file: ParamsOpt = PARAMS_FILE,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    scratch_seeds: Annotated[
        str, typer.Option("--scratch-seeds", help="Seeds of the from-scratch runs on the last union, comma-separated.")
    ] = "13,14,15",
    scratch_steps: Annotated[
        str,
        typer.Option(
            "--scratch-steps",
            help="all: the pipeline from scratch after every update; last: after the last update only.",
        ),
    ] = "all",
    scratch_overrides: Annotated[
        Optional[list[str]],
        typer.Option(
            "--scratch-set",
            help="Override one value of the from-scratch runs only: key=value (repeatable), e.g. "
            "prune.accuracy_budget_points=null to prune them to the first run's size.",
        ),
    ] = None,
) -> None:
    """The incremental demonstration, in this (new) project folder: a full run on the movie snippets, then
    product reviews, tweets and editorials as three updates, beside naive fine-tuning and the pipeline from
    scratch on all data so far; writes reports/incremental/stream.{md,json,png}. Hours at the default scale."""
    params, task = load_task(params_file, profile, overrides)
    from components.config import ConfigError
    from flows import incremental_demo as demo

    try:  # validated like --set, before anything runs
        demo.scratch_params(params, list(scratch_overrides or []))
    except ConfigError as err:
        fail(f"error: --scratch-set: {err}", 2)

    if task is not demo.TASK:
        fail(f"error: the incremental demo learns {demo.TASK.name} models; {params_file} sets task {task.name}", 2)
    try:
        seeds = [int(s) for s in scratch_seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"error: --scratch-seeds {scratch_seeds!r} is not a comma-separated list of integers", 2)
    if scratch_steps not in demo.SCRATCH_STEPS:
        fail(f"error: --scratch-steps {scratch_steps!r} is not one of {', '.join(demo.SCRATCH_STEPS)}", 2)
    preflight(task, params)
    outcome, minutes = run_flow(
        demo.demo,
        params,
        Path.cwd(),
        "incremental demo",
        scratch_seeds=seeds,
        scratch_steps=scratch_steps,
        scratch_settings=list(scratch_overrides or []),
    )
    typer.echo("")
    typer.secho(f"miniaturize: incremental demonstration finished in {minutes:.1f} min", bold=True)
    for line in Path(outcome["files"][1]).read_text().splitlines():
        if line.startswith("- "):
            typer.echo(f"  {line}")
    typer.echo(f"  written: {', '.join(outcome['files'])}")


@app.command()
def search(params_file: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None, overrides: SetOpt = None) -> None:
    """Search kept layers x prune ratio x vocabulary x quantization; register the fastest within tolerance."""
    params, task = load_task(params_file, profile, overrides)
    from components.kit.secrets import redact
    from flows import search as searching

    if task is not searching.TASK:
        fail(
            f"error: miniaturize search compresses {searching.TASK.name} models; {params_file} sets task {task.name}", 2
        )
    preflight(task, params, search=True)
    outcome, minutes = run_flow(searching.search, params, Path.cwd(), "search")
    reg = outcome["registration"]
    typer.echo("")
    typer.secho(f"miniaturize: search finished in {minutes:.1f} min", bold=True)
    typer.echo(f"  chosen:  {outcome['chosen']} ({outcome['reason']})")
    typer.echo(f"  front:   {', '.join(outcome['front'])}")
    typer.echo(f"  registered: {reg['model_uri']} is now @{reg['alias']} ({reg['reason']})")
    typer.echo(f"  report:  {outcome['reports']}/search.md (+ search.json, pareto.png)")
    typer.echo(f"  MLflow:  {redact(outcome['tracking_uri'])}  run {outcome['parent_run_id']}")


@app.command()
def stage(
    name: Annotated[
        str,
        typer.Argument(
            help="ingest, validate, finetune, distill, prune, trim, export, quantize, seeds, evaluate or register"
        ),
    ],
    params_file: ParamsOpt = PARAMS_FILE,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    processes: Annotated[
        Optional[int],
        typer.Option(
            "--processes",
            min=1,
            help="Train on N processes of this machine (torchrun; one per GPU): finetune, distill, prune. Default: distributed.processes (1).",
        ),
    ] = None,
    run_id: Annotated[
        Optional[str], typer.Option("--run-id", hidden=True, help="Log into this MLflow run (a launch's rank 0).")
    ] = None,
    result_file: Annotated[
        Optional[Path], typer.Option("--result", hidden=True, help="Write the stage's result here (JSON).")
    ] = None,
    workspace_paths: Annotated[
        Optional[list[str]],
        typer.Option(
            "--workspace-path",
            hidden=True,
            help="NAME=PATH: read or write this workspace path elsewhere (a launch's staging folder).",
        ),
    ] = None,
) -> None:
    """Run one stage on the files of the previous ones (dvc.yaml calls this)."""
    overrides = list(overrides or []) + ([f"distributed.processes={processes}"] if processes else [])
    params, task = load_task(params_file, profile, overrides)
    check_stage(name, task)
    from components.kit.processes import world_size
    from flows import launch

    if ((processes or 1) > 1 or world_size() > 1) and not task.stages[name].data_parallel:
        fail(f"error: only {', '.join(launch.training_stages(task))} train on several processes; run {name} in one", 2)
    preflight(task, params)
    with exit_codes(f"stage {name}"):
        if run_id is not None or result_file is not None:  # a process flows.launch started: in the caller's run
            paths = {key: Path(path) for key, _, path in (text.partition("=") for text in workspace_paths or [])}
            launch.join(task, name, params, Path.cwd().resolve(), paths, run_id, result_file)
        else:  # on its own (dvc repro, or torchrun by hand): the pipeline's lifecycle of one stage
            from flows.pipeline import run_one_stage

            run_one_stage(params, name, Path.cwd())


@app.command()
def promote(
    version: Annotated[str, typer.Option("--version", help="Registered model version to promote.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if the gate fails (needs --reason); recorded as forced.")
    ] = False,
    reason: ReasonOpt = None,
    params_file: ParamsOpt = PARAMS_FILE,
    overrides: SetOpt = None,
    data: DataOpt = None,
) -> None:
    """Make VERSION the champion if it passes the gate: against its teacher and against the current champion."""
    if force and not (reason or "").strip():
        fail("error: --force needs --reason TEXT (it is recorded with the alias move)", 2)
    params, task = load_with_data(params_file, None, overrides, data, "promote")
    from flows import registry

    with exit_codes("promote"):
        result = registry.promote(
            task, params, task.workspace(Path.cwd().resolve()), version, force=force, reason=reason
        )
    note = (
        f" (FORCED past {', '.join(n for n, c in result['checks']['checks'].items() if not c['passed'])})"
        if result["forced"]
        else ""
    )
    typer.echo(
        f"{result['model_name']} version {result['version']} is now @{result['alias']}{note}; "
        f"previous champion: {result['previous'] or 'none'}"
    )


@app.command()
def rollback(
    reason: ReasonOpt = "manual rollback",
    params_file: ParamsOpt = PARAMS_FILE,
    data: DataOpt = None,
) -> None:
    """Move the champion back to the previous champion (by the recorded alias history)."""
    params, task = load_with_data(params_file, None, None, data, "rollback")
    from flows import registry

    with exit_codes("rollback"):
        result = registry.rollback(params, task.workspace(Path.cwd().resolve()), reason)
    typer.echo(f"{result['model_name']}: champion rolled back from version {result['from']} to {result['version']}")


@app.command()
def lineage(
    version: Annotated[str, typer.Argument(help="Registered model version.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    params_file: ParamsOpt = PARAMS_FILE,
    data: DataOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="A registered model's name, e.g. the incremental demonstration's miniaturize-sentiment-stream "
            "(default: the params' model).",
        ),
    ] = None,
) -> None:
    """Where VERSION comes from: git commit, data hash, params, teacher run, every stage key and run, alias moves."""
    import json

    params, task = load_with_data(params_file, None, None, data, "lineage")
    from flows.registry import lineage as trace

    with exit_codes("lineage"):
        chain = trace(task, params, task.workspace(Path.cwd().resolve()), version, model)
    if as_json:
        typer.echo(json.dumps(chain, indent=2))
        return
    typer.secho(
        f"{chain['model_name']} version {chain['version']}  aliases now: {', '.join(chain['aliases_now']) or 'none'}",
        bold=True,
    )
    for label, key in (
        ("git commit", "git_commit"),
        ("data sha256", "data_sha256"),
        ("params hash", "params_hash"),
        ("pipeline run", "pipeline_run"),
        ("teacher run", "teacher_run"),
        ("model run", "model_run"),
    ):
        typer.echo(f"  {label:<13} {chain[key] or '-'}")
    if chain["stages"]:
        typer.echo("  stages (key, run that produced the outputs):")
        for row in chain["stages"]:
            typer.echo(f"    {row['stage']:<9} {row['key']}  {row['run']}")
    else:
        typer.echo(f"  stages: not recorded (source: {chain['source']})")
    if len(chain["updates"]) > 1:
        typer.echo("  updates, newest first (version, kind, batch learned, data sha256, aliases):")
        for row in chain["updates"]:
            typer.echo(
                f"    v{row['version']:<4} {row['kind']:<9} {row['batch']:<12} {row['data_sha256'][:16]}  "
                f"{', '.join('@' + a for a in row['aliases']) or '-'}"
            )
        typer.echo(f"  data seen: {', '.join(b['name'] + ' ' + b['sha256'][:12] for b in chain['batches'])}")
    for e in chain["alias_history"]:
        forced = " FORCED" if e["forced"] else ""
        typer.echo(f"  {e['at']}  {e['action']} @{e['alias']}{forced} by {e['by']}: {e['reason']}")


@app.command()
def package(
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Folder to write the bundle to: a new or empty folder, or an earlier bundle (replaced)."
        ),
    ],
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder; default the champion."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace --out even when it is a folder holding other files (never a file, a link or the current folder).",
        ),
    ] = False,
    params_file: ParamsOpt = PARAMS_FILE,
) -> None:
    """Write an edge bundle: int8 ONNX model, tokenizer, labels, manifest with hashes, and predict.py; prints
    the manifest's sha256, which predict.py and serve-model pin with --expect-manifest."""
    import tempfile

    from components.bundle import manifest_sha256, out_dir_problem, package as make_bundle

    problem = out_dir_problem(out, force)  # judged before anything is downloaded, built or removed
    if problem:
        fail(f"error: {problem}", 2)
    params, task = load_task(params_file)
    from flows.registry import bundle_source
    from flows.tasks import TASKS

    with tempfile.TemporaryDirectory() as tmp, exit_codes(f"package {model or 'the champion'}"):
        folder, source, metrics = bundle_source(params, task.workspace(Path.cwd().resolve()), model, Path(tmp), TASKS)
        bundle = make_bundle(folder, out, source, metrics, params.teacher.max_length, force=force)
    typer.echo(f'bundle written: {bundle}  (python {bundle / "predict.py"} "some text")')
    typer.echo(
        f"manifest sha256: {manifest_sha256(bundle)}  (pin it: predict.py --expect-manifest SHA256, "
        "miniaturize serve-model DIR --expect-manifest SHA256)"
    )


@app.command()
def bench(
    repeats: Annotated[int, typer.Option(help="Rounds over all models.")] = 3,
    params_file: ParamsOpt = PARAMS_FILE,
    overrides: SetOpt = None,
) -> None:
    """Re-measure every model of the latest report side by side: median and min-max latency over rounds."""
    import json

    params, task = load_task(params_file, None, overrides)
    if task.bench is None:
        from flows.tasks import TASKS

        fail(
            f"error: miniaturize bench does not re-measure {task.name} models ({params_file}); it benches "
            f"{', '.join(name for name, other in TASKS.items() if other.bench)}",
            2,
        )
    ws = task.workspace(Path.cwd().resolve())
    if not ws.report.exists():
        fail(f"error: no report at {ws.report}: run the pipeline first (make run)", 2)
    result, text = task.bench(params, ws, repeats)
    (ws.reports / "bench.json").write_text(json.dumps(result, indent=2))
    typer.echo(text)
    typer.echo(f"\nwritten: {ws.reports / 'bench.json'}")


@app.command("serve-model")
def serve_model(
    bundle: Annotated[
        str,
        typer.Argument(
            help="Bundle folder written by `miniaturize package --out`, or models:/NAME@ALIAS | models:/NAME/VERSION: the edge bundle registered with that version, checked against its bundle.manifest_sha256 tag."
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    max_text_chars: Annotated[
        int, typer.Option(min=1, help="Longest text or prompt accepted, in characters (413 above).")
    ] = 2000,
    max_batch: Annotated[int, typer.Option(min=1, help="Most texts in one request (413 above).")] = 64,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads per inference.")] = 2,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, help="Most tokens one /generate request may ask for (causal-LM bundles; 413 above).")
    ] = 64,
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="Largest request body in bytes (413 above, answered before the body is read).")
    ] = 1 << 20,
    expect_manifest: Annotated[
        Optional[str],
        typer.Option(
            "--expect-manifest",
            metavar="SHA256",
            help="Refuse the bundle unless its manifest.json has this sha256 (printed by package).",
        ),
    ] = None,
    docs: Annotated[
        bool,
        typer.Option("--docs", help="Also serve the interactive API documentation (/docs, /redoc, /openapi.json)."),
    ] = False,
) -> None:
    """Serve an edge bundle over HTTP: GET /health, and POST /predict {"texts": [...]} (classification; a
    multitask bundle answers every task per text: {"tasks": {task: {"label", "scores"}}}) or POST
    /generate {"prompt": "..."} (causal-LM). The bundle is checked before anything listens."""
    import tempfile

    from components.serve import BundleError, serve

    with tempfile.TemporaryDirectory() as tmp:
        folder, expected = served_bundle(bundle, expect_manifest, Path(tmp))
        typer.echo(f"checking and loading {bundle} ...")
        try:
            serve(
                folder,
                host,
                port,
                max_text_chars,
                max_batch,
                threads,
                max_new_tokens=max_new_tokens,
                max_body_bytes=max_body_bytes,
                docs=docs,
                expect_manifest=expected,
            )
        except BundleError as err:
            fail(f"error: refusing to serve {bundle}: {err}", 2)


def served_bundle(bundle: str, expect_manifest: str | None, download_to: Path) -> tuple[Path, str | None]:
    """(folder, manifest sha256 it must have) for serve-model: a bundle folder as given, or a registered
    version's edge bundle downloaded into `download_to`, pinned by its bundle.manifest_sha256 tag."""
    if not bundle.startswith("models:/"):
        if not Path(bundle).is_dir():
            fail(
                f"error: bundle folder {bundle} does not exist (write one with: miniaturize package --out {bundle})", 2
            )
        return Path(bundle), expect_manifest
    from flows.registry import MANIFEST_TAG, BundleNotRegistered, registered_bundle

    try:
        folder, pinned = registered_bundle(Path.cwd().resolve(), bundle, download_to)
    except BundleNotRegistered as err:
        fail(f"error: refusing to serve {bundle}: {err}", 2)
    except Exception as err:  # noqa: BLE001 - e.g. no such registered model, alias or artifact
        fail(f"error: cannot find the edge bundle of {bundle}: {type(err).__name__}: {err}", 2)
    if expect_manifest and expect_manifest.strip().lower() != pinned:
        fail(
            f"error: refusing to serve {bundle}: --expect-manifest {expect_manifest} is not its registered "
            f"{MANIFEST_TAG} {pinned}",
            2,
        )
    return folder, pinned


@app.command()
def figures(
    params_file: ParamsOpt = PARAMS_FILE,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    write: PageOpt = None,
) -> None:
    """Print the measured figures of the task's latest report as a docs section, stamped with the registered
    version, git commit and params hash it comes from (flows/figures.py)."""
    from components.config import section_hash
    from flows import figures as generated
    from flows.tracking import tracking_uri

    params, task = load_task(params_file, profile, overrides)
    ws, root = task.workspace(Path.cwd()), Path.cwd()
    with exit_codes("figures"):
        stamp = generated.read_stamp(ws.reports, params_file, section_hash(params.as_dict()), tracking_uri(root))
        text = generated.section(task.name, ws.report_md.read_text(), ws.report_md.relative_to(root).as_posix(), stamp)
        if write is None:
            typer.echo(text, nl=False)
            return
        page = write.read_text() if write.exists() else ""
        write.write_text(generated.replace_section(page, task.name, text))
        typer.echo(f"written: {task.name} section of {write}")


@app.command("dvc-yaml")
def dvc_yaml(
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Write nothing; exit 1, showing the difference, when dvc.yaml is not what the stage tables give.",
        ),
    ] = False,
) -> None:
    """Write dvc.yaml from the stage tables (flows/tasks/, one module per task): every stage's cmd, deps,
    params and outs, for every task."""
    from flows import dvc_yaml as generated

    path = Path.cwd() / "dvc.yaml"
    if not check:
        generated.write(path)
        typer.echo(f"written: {path}")
        return
    difference = generated.drift(path)
    if difference:
        fail(f"{path} differs from the stage tables (`miniaturize dvc-yaml` rewrites it):\n{difference}", 1)
    typer.echo(f"{path} matches the stage tables")


@app.command()
def deploy(
    name: Annotated[
        str, typer.Option("--name", help="Deployment name, under the flow miniaturize-scheduled.")
    ] = "nightly",
    cron: Annotated[
        str, typer.Option("--cron", help="When to run, as a cron expression (default: 02:00 every night).")
    ] = "0 2 * * *",
    timezone: Annotated[
        str, typer.Option("--timezone", help="IANA timezone of the cron expression, e.g. Europe/Paris.")
    ] = "UTC",
    params_file: Annotated[
        Optional[Path],
        typer.Option("--params", help="Params file, read when each run starts (default: params.yaml in --root)."),
    ] = None,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: Annotated[Path, typer.Option("--root", help="Project folder the runs work in, fixed when deploying.")] = Path(
        "."
    ),
    until: UntilOpt = None,
    update: Annotated[
        Optional[str],
        typer.Option(
            "--update",
            help="Schedule incremental updates with this batch file (relative to --root) instead of pipeline runs; a run whose file the champion has learned already does nothing.",
        ),
    ] = None,
) -> None:
    """Run the pipeline on a schedule: register a Prefect deployment and execute its runs here until Ctrl-C.
    The folder, params file, profile and overrides are bound to the deployment; a run may only set `until`.
    With --update, each run is an incremental update with that batch file instead."""
    import urllib.request

    overrides = list(overrides or [])
    if not root.is_dir():
        fail(f"error: project folder {root} does not exist", 2)
    params_file = (params_file or root / PARAMS_FILE).resolve()
    check_stage(until, load_task(params_file, profile, overrides)[1])  # bad params fail now, not at the first run
    from prefect.settings import get_current_settings

    from flows.deploy import FLOW_NAME, build_deployment, serve

    try:
        deployment = build_deployment(name, cron, timezone, root, params_file, profile, overrides, until, update)
    except ValueError as err:
        fail(f"error: {err}", 2)
    settings = get_current_settings()
    api = settings.api.url
    if not api:
        fail(
            "error: PREFECT_API_URL is not set; a schedule needs a running Prefect server. Start one and deploy "
            "with `make serve` (or `prefect server start` and PREFECT_API_URL=http://127.0.0.1:4200/api).",
            2,
        )
    try:
        urllib.request.urlopen(f"{api}/health", timeout=10).close()
    except OSError as err:
        fail(f"error: no Prefect server answers at {api} ({err}); start one with `make serve`", 2)
    full_name = f"{FLOW_NAME}/{name}"
    typer.secho(f"miniaturize: serving {full_name} on {api}", bold=True)
    typer.echo(f"  schedule: {cron} ({timezone}); one run at a time, params read when each run starts")
    if update:
        typer.echo(f"  each run: an incremental update with {update} (nothing to do when the champion has learned it)")
    typer.echo(
        f"  project:  {root.resolve()}, params {params_file}"
        + (f", profile {profile}" if profile else "")
        + (f", --set {' '.join(overrides)}" if overrides else "")
        + (f", up to {until}" if until else "")
        + "  (fixed; a run may only set until)"
    )
    typer.echo(f"  run now:  PREFECT_API_URL={api} prefect deployment run {full_name}")
    typer.echo(f"  UI:       {settings.ui_url or api.removesuffix('/api')}/deployments  (runs, logs, schedule)")
    typer.echo("Ctrl-C stops serving and pauses the schedule; deploying again resumes it.")
    serve(deployment)


if __name__ == "__main__":
    app()
