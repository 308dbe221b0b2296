"""The `miniaturize` command line.

    miniaturize run [--profile smoke] [--data FILE] [--set key=value ...]   # the whole pipeline
    miniaturize stage NAME                                                    # one stage (what dvc.yaml runs)
    miniaturize search [--profile smoke] [--set key=value ...]               # candidates, Pareto front, best one
    miniaturize package [--model models:/NAME@champion] --out DIR            # edge bundle with predict.py
    miniaturize promote --version N                                           # champion through the gate
    miniaturize bench [--repeats 3]                                           # re-measure the report's models

Exit codes: 0 done, 1 a stage failed, 2 bad params or input path, 3 data validation failed,
4 the gate refused a promotion.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turn a large transformer into a small, fast, validated int8 ONNX model.")

# Quiet, offline-friendly defaults; an ephemeral Prefect API on a busy 2-core machine can take over 20 s.
QUIET_ENV = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
             "TRANSFORMERS_VERBOSITY": "error", "DO_NOT_TRACK": "1"}

ParamsOpt = Annotated[Path, typer.Option("--params", help="Params file.")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="Named override set from params.yaml, e.g. smoke.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one value: key=value (repeatable).")]


def fail(message: str, code: int) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def run_flow(flow_fn, params, root: Path, what: str) -> tuple[dict, float]:
    """Run a Prefect flow; map its failures to exit codes (3 data validation, 1 anything else).
    Returns the flow's result and the minutes it took."""
    from components.validate import ValidationFailed

    started = time.perf_counter()
    try:
        outcome = flow_fn(params, root=str(root))
    except ValidationFailed as err:
        fail(f"\n{err}\n\nFull validation result: {err.report_path}\nNothing was trained or registered.", 3)
    except Exception as err:  # noqa: BLE001 - one clear line instead of a Prefect traceback
        fail(f"\nerror: {what} failed: {type(err).__name__}: {err}", 1)
    return outcome, (time.perf_counter() - started) / 60


def load(params_file: Path, profile: str | None, overrides: list[str]):
    from components.config import ConfigError, load_params

    try:
        return load_params(params_file, profile, overrides)
    except ConfigError as err:
        fail(f"error: {err}", 2)


@app.command()
def run(params_file: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None,
        data: Annotated[Optional[str], typer.Option("--data", help="CSV/JSONL/Parquet with text,label, or a hub dataset id.")] = None,
        overrides: SetOpt = None) -> None:
    """Run the whole pipeline: ingest, validate, finetune, distill, prune, trim, export, quantize, seeds, evaluate, register."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    overrides = list(overrides or [])
    if data:
        path = Path(data)
        if not path.exists() and path.suffix:  # a file name, not a hub dataset id
            fail(f"error: data file {data} does not exist", 2)
        overrides.append(f"data.source={path.resolve() if path.exists() else data}")
    params = load(params_file, profile, overrides)
    root = Path.cwd()
    from flows.pipeline import pipeline

    outcome, minutes = run_flow(pipeline, params, root, "pipeline")
    print_summary(root, outcome, minutes)
    if profile or overrides:
        typer.echo("DVC: not recorded (this run used --profile/--set/--data; put the values in params.yaml to version them)")
    else:
        from flows.versioning import commit_outputs

        typer.echo(commit_outputs(root)[1])


def print_summary(root: Path, outcome: dict, minutes: float) -> None:
    import json

    reg = outcome["registration"]
    report = json.loads((root / "reports" / "compression_report.json").read_text())
    ratios = report["final_vs_teacher"]
    teacher, final = report["models"]["teacher"], report["models"]["final"]
    typer.echo("")
    typer.secho(f"miniaturize: pipeline finished in {minutes:.1f} min", bold=True)
    typer.echo(f"  teacher accuracy {teacher['accuracy']:.4f} -> final {final['accuracy']:.4f} "
               f"(drop {ratios['accuracy_drop_points']:.2f} points)")
    typer.echo(f"  size {ratios['size_ratio']:.2f}x smaller, batch-1 p50 {ratios['speedup_batch1_p50']:.2f}x faster")
    gate = "passed" if reg["gate_passed"] else "FAILED (" + ", ".join(reg["failed_checks"]) + ")"
    typer.echo(f"  gate {gate}: {reg['model_name']} version {reg['version']} is now @{reg['alias']}")
    typer.echo(f"  report:  {root / 'reports' / 'compression_report.md'} (+ .json, compression_plot.png)")
    typer.echo(f"  MLflow:  {outcome['tracking_uri']}  experiment {outcome['experiment_id']}, "
               f"run {outcome['parent_run_id']}  (make ui -> http://127.0.0.1:5000)")
    typer.echo(f"  model:   {reg['model_uri']}  (models:/{reg['model_name']}@{reg['alias']})")


@app.command()
def search(params_file: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None, overrides: SetOpt = None) -> None:
    """Search kept layers x prune ratio x vocabulary x quantization; register the fastest within tolerance."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    params = load(params_file, profile, list(overrides or []))
    from flows.search import search as search_flow

    outcome, minutes = run_flow(search_flow, params, Path.cwd(), "search")
    reg = outcome["registration"]
    typer.echo("")
    typer.secho(f"miniaturize: search finished in {minutes:.1f} min", bold=True)
    typer.echo(f"  chosen:  {outcome['chosen']} ({outcome['reason']})")
    typer.echo(f"  front:   {', '.join(outcome['front'])}")
    typer.echo(f"  registered: {reg['model_uri']} is now @{reg['alias']} ({reg['reason']})")
    typer.echo(f"  report:  {outcome['reports']}/search.md (+ search.json, pareto.png)")
    typer.echo(f"  MLflow:  {outcome['tracking_uri']}  run {outcome['parent_run_id']}")


@app.command()
def stage(name: Annotated[str, typer.Argument(help="ingest, validate, finetune, distill, prune, trim, export, quantize, seeds, evaluate or register")],
          params_file: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None, overrides: SetOpt = None) -> None:
    """Run one stage on the files of the previous ones (dvc.yaml calls this)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from flows.stages import STAGES

    if name not in STAGES:
        fail(f"error: unknown stage {name!r}; stages: {', '.join(STAGES)}", 2)
    params = load(params_file, profile, list(overrides or []))
    from components.validate import ValidationFailed
    from flows import tracking
    from flows.workspace import Workspace

    ws = Workspace(Path.cwd().resolve())
    client = tracking.client(ws.root)
    run_id = tracking.start_run(client, tracking.experiment_id(client, ws.root), f"stage-{name}",
                                tags={"miniaturize.stage": name})
    ok = False
    started = time.perf_counter()
    typer.echo(f"[{name}] started")
    try:
        STAGES[name](params, ws, tracking.MlflowTracker(client, run_id))
        ok = True
    except ValidationFailed as err:
        fail(str(err), 3)
    finally:
        tracking.end_run(client, run_id, ok)
    typer.echo(f"[{name}] finished in {time.perf_counter() - started:.1f} s")


@app.command()
def promote(version: Annotated[str, typer.Option("--version", help="Registered model version to promote.")],
            params_file: ParamsOpt = Path("params.yaml"), overrides: SetOpt = None) -> None:
    """Make VERSION the champion if it passes the gate (with the gate config in params)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    params = load(params_file, None, list(overrides or []))
    from flows.registry import GateRejected, promote as do_promote
    from flows.workspace import Workspace

    try:
        result = do_promote(params, Workspace(Path.cwd().resolve()), version)
    except GateRejected as err:
        fail(f"refused: {err}", 4)
    typer.echo(f"{result['model_name']} version {result['version']} is now @{result['alias']}")


@app.command()
def package(out: Annotated[Path, typer.Option("--out", help="Folder to write the bundle to (replaced).")],
            model: Annotated[Optional[str], typer.Option("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder; default the champion.")] = None,
            params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Write an edge bundle: int8 ONNX model, tokenizer, labels, manifest with hashes, and predict.py."""
    import tempfile

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    params = load(params_file, None, [])
    from components.bundle import BundleSourceError, package as make_bundle
    from flows.registry import bundle_source
    from flows.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder, source, metrics = bundle_source(params, Workspace(Path.cwd().resolve()), model, Path(tmp))
            bundle = make_bundle(folder, out, source, metrics, params.teacher.max_length)
        except (BundleSourceError, FileNotFoundError) as err:
            fail(f"error: {err}", 2)
        except Exception as err:  # noqa: BLE001 - e.g. no such registered model or alias
            fail(f"error: cannot package {model or 'the champion'}: {type(err).__name__}: {err}", 2)
    typer.echo(f"bundle written: {bundle}  (python {bundle / 'predict.py'} \"some text\")")


@app.command()
def bench(repeats: Annotated[int, typer.Option(help="Rounds over all models.")] = 3,
          params_file: ParamsOpt = Path("params.yaml"), overrides: SetOpt = None) -> None:
    """Re-measure every model of the latest report side by side: median and min-max latency over rounds."""
    import json

    params = load(params_file, None, list(overrides or []))
    from components import bench as component
    from flows.stages import evaluated_models
    from flows.workspace import Workspace

    ws = Workspace(Path.cwd().resolve())
    if not ws.report.exists():
        fail(f"error: no report at {ws.report}: run the pipeline first (make run)", 2)
    names = json.loads(ws.report.read_text())["models"]
    models = [m for m in evaluated_models(ws) if m.name in names and m.path.exists()]
    cfg = params.evaluate
    result = component.run(models, ws.prepared, repeats, cfg.threads, cfg.warmup, cfg.batch1_calls,
                           min(cfg.batch32_calls, 50), params.teacher.max_length)
    (ws.reports / "bench.json").write_text(json.dumps(result, indent=2))
    typer.echo(component.render(result))
    typer.echo(f"\nwritten: {ws.reports / 'bench.json'}")


if __name__ == "__main__":
    app()
