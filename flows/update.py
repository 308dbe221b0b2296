"""Incremental updates as a Prefect flow: teach the @champion version a new labelled batch, without forgetting.

    miniaturize update --data FILE|vader-amazon [--profile smoke] [--set incremental.method=naive]

extract:   the champion, found through the registry alias, and its warm start (the `warm_start/` artifact
           every classification version carries: teacher, compressed student, replay buffer, every batch it
           saw); the new batch ingested and split by seed like any data, texts an earlier batch holds
           dropped, labels checked against the champion's, validated (Great Expectations). A batch whose data
           the champion has seen already (same sha256) ends the update at once: nothing to learn.
transform: teacher and student updated (`components.classification.update`), exported and quantized by the
           same components as a full run.
load:      accuracy of the new model and of the champion on every batch's test split, forgetting (the
           largest drop on an earlier batch) and cost; the forgetting gate (`components.kit.forgetting`); the
           version registered with its parent version and the batches it saw, @champion when the gate
           passes, else @challenger with the reason tagged. Only then are the batch (`data/batches/<name>`)
           and, for a new champion, the replay buffer (`data/replay/`) put in the workspace and recorded with
           `dvc add`.

Everything is written into a staging folder first; the champion alias moves last. An update killed at any
point leaves the champion, its files and the workspace data as they were.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.config import Params, data_source_id, section_hash
from components.kit import gate
from components.kit.forgetting import decide, p_value_text, per_batch, reason
from components.kit.promotion import CHAMPION
from components.kit.secrets import redact
from components.kit.tracking import PrefixedTracker, Tracker
from flows import artifacts, prefect_api, registry, tracking
from flows.lock import note, workspace_lock
from flows.pipeline import settle_killed_runs
from flows.retries import RetryPolicy
from flows.run_log import printed_to_run_log
from flows.tasks.classification import TASK, ClassificationWorkspace
from flows.versioning import dvc

REPORT_DIR = "update"  # reports/update/: one report per update, by version


class NoWarmStart(LookupError):
    """There is no champion to update, or it was registered without a warm start."""


def staging(ws: ClassificationWorkspace) -> Path:
    return ws.state / "update"


def batches_dir(ws: ClassificationWorkspace) -> Path:
    return ws.root / "data" / "batches"


def replay_dir(ws: ClassificationWorkspace) -> Path:
    return ws.root / "data" / "replay"


def seen_batches(version) -> list[dict]:
    """[{name, sha256}] of every batch a version learned, oldest first (its `incremental.batches` tag)."""
    raw = version.tags.get("incremental.batches")
    if not raw:
        raise NoWarmStart(
            f"version {version.version} was registered without a warm start (before incremental updates); "
            "run the pipeline once (`miniaturize run`) to register one that can be updated"
        )
    return json.loads(raw)


def unique_name(name: str, taken: list[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


# ---------------------------------------------------------------- the steps (Prefect tasks)


@task(name="champion", cache_policy=NO_CACHE)
def fetch_champion(p: Params, client, start: str | None, out: Path) -> tuple:
    """(the version to update, its warm start folder, its int8 model folder), downloaded from the registry:
    `start` (models:/NAME/VERSION or models:/NAME@ALIAS), by default the @champion of the params' model
    (`registered_model_name`: the model the pipeline registered, named after its data, not after the batch)."""
    if start is not None:
        champion = registry.find_version(client, start)[1]
    else:
        champion = registry.champion_version(client, p.registered_model_name())
    if champion is None:
        others = sorted(m.name for m in client.search_registered_models() if CHAMPION in (m.aliases or {}))
        hint = (
            f"; models with a @champion here: {', '.join(others)} (update one with "
            f"`--from models:/{others[0]}@champion`)"
            if others
            else ""
        )
        raise NoWarmStart(
            f"{p.registered_model_name()} has no @champion version to update; run the pipeline first "
            f"(`miniaturize run`){hint}"
        )
    seen_batches(champion)  # refuses a version without a warm start before anything is downloaded
    out.mkdir(parents=True, exist_ok=True)
    warm = Path(client.download_artifacts(champion.run_id, registry.WARM_START, str(out)))
    model = Path(client.download_artifacts(champion.run_id, registry.BUNDLE, str(out)))
    print(f"[update] starting from {champion.name} version {champion.version}", flush=True)
    return champion, warm, model


@task(name="ingest-batch", cache_policy=NO_CACHE)
def ingest_batch(p: Params, ws: ClassificationWorkspace, data: str, out: Path, tracker: Tracker) -> dict:
    """The new batch as prepared splits (like the ingest stage, no transfer set): its data card."""
    from components.classification import ingest

    cfg = p.data.model_copy(update={"source": data, "transfer": False})
    result = ingest.run(cfg, out, PrefixedTracker(tracker, "ingest."), cache_dir=ws.raw, root=ws.root)
    return result.info["card"]


@task(name="validate-batch", cache_policy=NO_CACHE)
def validate_batch(p: Params, batch: Path, labels: list[str], out: Path, tracker: Tracker) -> None:
    from components import validate

    validate.run(p.section("validate"), batch, out, PrefixedTracker(tracker, "validate."), expected_labels=labels)


@task(name="train-update", cache_policy=NO_CACHE)
def train_update(p: Params, warm: Path, batch: Path, name: str, out: Path, tracker: Tracker) -> dict:
    from components.classification import update
    from components.kit.grow import Growth
    from components.kit.training import use_threads
    from flows.tasks.chain import accuracy_budget

    use_threads(p.threads)
    budget, growth = accuracy_budget(p), Growth(p.distill.layers, p.distill.deeper_layers)
    result = update.run(p.incremental, warm, batch, name, out, tracker, p.seed, p.teacher.max_length, budget, growth)
    return result.metrics | {k: result.info[k] for k in ("restored_pieces", "mix_val_accuracy")}


def shipped_variant(model: Path) -> str | None:
    """The quantized variant a model folder ships (its quantize_report.json), None when it does not say."""
    report = model / "quantize_report.json"
    return json.loads(report.read_text()).get("chosen") if report.is_file() else None


@task(name="export-quantize", cache_policy=NO_CACHE)
def export_and_quantize(
    p: Params, student: Path, prepared: Path, out: Path, tracker: Tracker, keep: str | None = None
) -> str:
    """Export and quantize the updated student; `keep`, the champion's variant, ships whenever it is still
    eligible, so that the update keeps the champion's format (and size) rather than a latency coin-toss."""
    from components.classification import export, quantize

    length = p.teacher.max_length
    export.run(p.export, student, prepared, out / "onnx_fp32", PrefixedTracker(tracker, "export."), max_length=length)
    chosen = quantize.run(
        p.quantize,
        out / "onnx_fp32",
        prepared,
        out / "final",
        PrefixedTracker(tracker, "quantize."),
        max_length=length,
        threads=p.evaluate.threads,
        keep=keep,
    )
    return chosen.info["chosen"]


@task(name="evaluate-batches", cache_policy=NO_CACHE)
def evaluate_batches(p: Params, final: Path, champion_model: Path, batches: dict[str, Path]) -> tuple[dict, dict, dict]:
    """(new model's, champion's) test accuracy on every batch, by name, and on each batch with a test split
    the two models' paired outcomes (`forgetting.paired_change`)."""
    from components.classification.evaluate import split_correct
    from components.kit.forgetting import paired_change

    def on_all(model: Path) -> dict:
        return {n: split_correct(model, batches[n], "test", p.evaluate.threads, p.teacher.max_length) for n in batches}

    def accuracy(correct: dict) -> dict:
        return {n: None if c is None else float(c.mean()) for n, c in correct.items()}

    after, before = on_all(final), on_all(champion_model)
    paired = {n: paired_change(before[n], after[n]) for n in batches if after[n] is not None}
    return accuracy(after), accuracy(before), paired


def against_current_champion(
    p: Params, client, model_name: str, start, final: Path, after: dict, out: Path
) -> gate.Check | None:
    """When the update started from another version than the current @champion (`--from`), the forgetting
    check against that champion too, on every batch it has seen: otherwise an update of an older or refused
    version could take the alias while knowing less than the model it replaces. None when it started from
    the champion (or there is none)."""
    from components.classification.evaluate import split_accuracy
    from components.classification.update import earlier_batches
    from components.kit.forgetting import champion_check

    current = registry.champion_version(client, model_name)
    if current is None or (current.name, str(current.version)) == (start.name, str(start.version)):
        return None
    out.mkdir(parents=True, exist_ok=True)
    warm = Path(client.download_artifacts(current.run_id, registry.WARM_START + "/batches", str(out)))
    bundle = Path(client.download_artifacts(current.run_id, registry.BUNDLE, str(out)))
    batches = earlier_batches(warm.parent)  # the artifact keeps its path: <out>/warm_start/batches

    def measured(model: Path, names) -> dict:
        return {n: split_accuracy(model, batches[n], "test", p.evaluate.threads, p.teacher.max_length) for n in names}

    # the updated model on the champion's batches it has not seen itself (a version started from earlier)
    after = after | measured(final, [n for n in batches if n not in after])
    check = champion_check(measured(bundle, batches), after, p.incremental.max_forgetting_points)
    print(
        f"[update] started from version {start.version}, not the champion (version {current.version}): "
        f"largest drop against the champion {check.value:.2f} points",
        flush=True,
    )
    return check


# ---------------------------------------------------------------- deciding and reporting


def size_check(final: Path, champion_model: Path, max_growth: float, grown_params: int = 0) -> gate.Check:
    """The update may grow the model (restored wordpieces) by at most `register.gate.max_size_growth_vs_champion`;
    a student grown by a teacher layer also by that layer's `grown_params` weights at one byte each (the int8
    the pipeline ships)."""
    from components.kit.modeling import dir_size_bytes

    champion = max(1, dir_size_bytes(champion_model))
    growth = dir_size_bytes(final) / champion
    limit = max_growth + grown_params / champion
    return gate.Check(growth, limit, growth <= limit + gate.TOLERANCE)


def build_report(
    p: Params,
    champion,
    name: str,
    card: dict,
    rows: list[dict],
    decision: gate.GateDecision,
    trained: dict,
    chosen: str,
    seconds: float,
    size_bytes: int,
    dropped_seen: int,
) -> dict:
    after = [r["after"] for r in rows if r["after"] is not None]
    mean = sum(after) / len(after) if after else None
    forgot = decision.checks["forgetting"].value
    return {
        "task": TASK.name,
        "kind": "update",
        "method": p.incremental.method,
        "parent_version": str(champion.version),
        "batch": name,
        "dataset": {"sha256": card["sha256"], "source": card["source"], "rows": card["rows"]},
        "dropped_seen_in_earlier_batches": dropped_seen,
        "per_batch": rows,
        "mean_accuracy": mean,
        "forgetting_points": forgot if math.isfinite(forgot) else None,  # None: an earlier batch was not measured
        "gate": decision.as_dict(),
        "reason": reason(decision, rows),
        "cost": {
            "seconds": seconds,
            "examples": int(trained["examples"]),
            "teacher_examples": int(trained["teacher.examples"]),
            "student_examples": int(trained["student.examples"]),
        },
        "wordpieces_restored": int(trained["student.wordpieces_restored"]),
        "restored_examples": trained["restored_pieces"][:20],
        # the share of the trained student's update kept (None: not mixed) and each share's validation
        # accuracy per batch, which chose it
        "mix_share": trained.get("student.mix_share"),
        "mix_chosen": p.incremental.mix_share is None,
        "mix_val_accuracy": trained.get("mix_val_accuracy"),
        "quantization": chosen,
        # the updated student against the updated teacher, by the accuracy budget of a full run (None: no budget)
        "budget": None
        if "student.spent_points" not in trained
        else {
            "spent_points": trained["student.spent_points"],
            "bound": trained.get("student.spent_bound"),
            "within": bool(trained["student.within_budget"]),
        },
        # the champion student against the updated teacher on the batches it knew, before it was trained, and
        # the teacher layer it grew by when that was over the budget (None: not judged)
        "growth": None
        if "student.known_spent_points" not in trained
        else {
            "spent_points": trained["student.known_spent_points"],
            "within": bool(trained["student.known_within_budget"]),
            "layer": None if "student.grown_layer" not in trained else int(trained["student.grown_layer"]),
            "params_ratio": trained.get("student.grown_params_ratio"),
            "params_added": trained.get("student.grown_params"),
        },
        "models": {"final": {"accuracy": mean, "size_bytes": size_bytes}},
    }


def gate_detail(report: dict) -> str:
    """What the gate read: a refusal's reason, or each check's value against its limit when it passed."""
    if not report["gate"]["passed"]:
        return report["reason"]
    checks = report["gate"]["checks"].items()
    return ", ".join(
        f"{name} {'-' if c['value'] is None else format(c['value'], '.2f')} against {c['threshold']:.2f}"
        for name, c in checks
    )


def growth_lines(growth: dict | None) -> list[str]:
    """The report's line on the champion student judged before it learned the batch (none when not judged)."""
    if growth is None:
        return []
    judged = (
        f"- champion student against the updated teacher on the batches it knew: {growth['spent_points']:+.2f} points"
    )
    if growth["within"]:
        return [f"{judged}, within the accuracy budget: its architecture kept"]
    if growth["layer"] is None:
        return [
            f"{judged}, over the accuracy budget; not grown (distill.deeper_layers has no layer left to add, or "
            "the student does not record its teacher layers)"
        ]
    return [
        f"{judged}, over the accuracy budget: grown by the teacher's layer {growth['layer']} "
        f"({growth['params_ratio']:.2f}x the parameters) before it learned the batch"
    ]


def budget_lines(budget: dict | None) -> list[str]:
    """The report's line on the updated student against the updated teacher (none without a budget)."""
    if budget is None:
        return []
    bound = "" if budget["bound"] is None else f" (upper bound {budget['bound']:.2f})"
    verdict = (
        "within the accuracy budget a full run holds its student to"
        if budget["within"]
        else "over the accuracy budget a full run holds its student to: the first run's student may no longer "
        "fit every batch (a full run on all the data chooses its depth and pruning again)"
    )
    spent = f"{budget['spent_points']:+.2f} points{bound}"
    return [f"- student against the updated teacher (every batch's validation): {spent}, {verdict}"]


def render_markdown(report: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    def pts(v):
        return "-" if v is None else f"{v:+.2f}"

    lines = [
        f"# Incremental update: batch {report['batch']} on version {report['parent_version']} ({report['method']})",
        "",
        "| batch | champion acc | updated acc | change (points) | right to wrong | wrong to right | McNemar p |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["per_batch"]:
        label = f"{r['batch']} (new)" if r["new"] else r["batch"]
        pair = r.get("paired")  # absent from reports written before paired outcomes were kept
        flips = f"{pair['lost']} | {pair['gained']} | {p_value_text(pair['p_value'])}" if pair else "- | - | -"
        lines.append(f"| {label} | {pct(r['before'])} | {pct(r['after'])} | {pts(r['change_points'])} | {flips} |")
    cost = report["cost"]
    lines += [
        "",
        f"- mean test accuracy over every batch: {pct(report['mean_accuracy'])}",
        "- forgetting (largest drop on an earlier batch): "
        + ("not measured" if report["forgetting_points"] is None else f"{report['forgetting_points']:.2f} points"),
        "- right to wrong, wrong to right: the batch's test sentences the champion answered right and the updated"
        " model wrong, and the other way; McNemar p: how likely a split at least this uneven is when neither model"
        " is better (small test splits move a point with a few sentences)",
        f"- gate: {'passed' if report['gate']['passed'] else 'refused'} ({gate_detail(report)})",
        f"- cost: {cost['seconds']:.0f} s wall, {cost['examples']:,} training examples processed "
        f"(teacher {cost['teacher_examples']:,}, student {cost['student_examples']:,})",
        f"- wordpieces restored into the student's vocabulary: {report['wordpieces_restored']}"
        + (f" (e.g. {', '.join(report['restored_examples'][:8])})" if report["restored_examples"] else ""),
        "- student weights: "
        + (
            "trained as they are (no mixing)"
            if report.get("mix_share") is None
            else f"{report['mix_share']:.2f} of the update kept, mixed back toward the weights it started from "
            + ("(chosen on validation over every batch)" if report.get("mix_chosen") else "(incremental.mix_share)")
        ),
        f"- quantization shipped: {report['quantization']}",
        *growth_lines(report.get("growth")),
        *budget_lines(report.get("budget")),
        f"- texts dropped because an earlier batch holds them: {report['dropped_seen_in_earlier_batches']}",
    ]
    return "\n".join(lines) + "\n"


def version_tags(p: Params, ws, champion, report: dict, seen: list[dict], parent_run: str) -> dict[str, str]:
    return {
        "git_commit": registry.git_commit(ws.root),
        "data_sha256": report["dataset"]["sha256"],
        # the source of the data the model continues, not the batch's: a growing dataset stays one source
        registry.DATA_SOURCE_TAG: champion.tags.get(registry.DATA_SOURCE_TAG) or data_source_id(p.data_source()),
        "params_hash": section_hash(p.as_dict()),
        "parent_run_id": parent_run,
        "task": TASK.name,
        "source": "update",
        "metrics_split": registry.METRICS_SPLIT,
        "gate_passed": str(report["gate"]["passed"]).lower(),
        "gate_failed_checks": ",".join(k for k, c in report["gate"]["checks"].items() if not c["passed"]),
        "final.accuracy": f"{report['mean_accuracy']:.6g}",
        "final.size_bytes": str(int(report["models"]["final"]["size_bytes"])),
        "incremental.kind": "update",
        "incremental.method": report["method"],
        "incremental.parent_version": str(champion.version),
        "incremental.parent_model": champion.name,
        "incremental.batch": report["batch"],
        "incremental.batches": json.dumps(seen),
        "incremental.forgetting_points": f"{report['forgetting_points']:.4g}"
        if report["forgetting_points"] is not None
        else "",
        "incremental.examples": str(report["cost"]["examples"]),
        "incremental.seconds": f"{report['cost']['seconds']:.1f}",
    }


def put_in_workspace(ws: ClassificationWorkspace, batch: Path, name: str, next_replay: Path | None) -> str:
    """The batch into data/batches/<name> and (for a new champion) the replay buffer into data/replay/, each
    recorded with `dvc add` when the project uses DVC; returns the line to print."""
    target = batches_dir(ws) / name
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(batch, target)
    paths = [target]
    if next_replay is not None:
        replay_dir(ws).mkdir(parents=True, exist_ok=True)
        shutil.copy2(next_replay, replay_dir(ws) / "replay.parquet")
        paths.append(replay_dir(ws))
    rel = [path.relative_to(ws.root).as_posix() for path in paths]
    if not (ws.root / ".dvc").is_dir():
        return f"DVC: no .dvc/ here; {', '.join(rel)} written, not recorded"
    done = dvc(ws.root, "add", "--quiet", *rel)
    if done.returncode != 0:
        return f"DVC: add failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return f"DVC: {', '.join(rel)} recorded ({', '.join(r + '.dvc' for r in rel)}; `dvc push` stores them)"


# ---------------------------------------------------------------- the flow


# Prints reach the Prefect run log through `printed_to_run_log`, standard output unchanged (flows/run_log.py).
@flow(name="miniaturize-update", log_prints=False)
def update(
    params: Params,
    data: str,
    root: str = ".",
    run_name: str | None = None,
    wait_seconds: float = 0.0,
    start: str | None = None,
) -> dict:
    """Teach the champion (or the version `start` names) the batch `data` (a file of the project or a built-in
    source), registering the result as a new version of the model it continues (`registered_model_name`: an
    explicit `register.model_name`, else the champion's own name); one update or run at a time per workspace."""
    ws = TASK.workspace(Path(root).resolve())
    with printed_to_run_log(), workspace_lock(ws.root, f"miniaturize update {data}", wait_seconds):
        settle_killed_runs(ws.root, params)  # a run or update killed before: its runs marked, as a run does
        note(ws.root, **prefect_api.this_flow_run())
        outcome = run_update(params, ws, data, run_name, start)
        artifacts.publish_update_report(TASK.name, outcome)  # the report in the Prefect UI (none: nothing new)
        return outcome


def run_update(p: Params, ws: ClassificationWorkspace, data: str, run_name: str | None, start: str | None) -> dict:
    import mlflow

    started = time.perf_counter()
    client = tracking.client(ws.root, RetryPolicy(p.retries.tracking_attempts, p.retries.tracking_backoff_seconds))
    mlflow.set_tracking_uri(tracking.tracking_uri(ws.root))
    work = staging(ws)
    shutil.rmtree(work, ignore_errors=True)  # what a killed update left behind
    work.mkdir(parents=True)

    # extract: the champion's warm start, the new batch
    champion, warm, champion_model = fetch_champion(p, client, start, work / "champion")
    seen = seen_batches(champion)
    experiment = tracking.experiment_id(client, ws.root)
    run_id = tracking.start_run(
        client,
        experiment,
        run_name or time.strftime("update-%Y%m%d-%H%M%S"),
        tags={"miniaturize.update_of": str(champion.version), "miniaturize.params_hash": section_hash(p.as_dict())},
    )
    note(ws.root, mlflow_run_id=run_id)  # what the next run needs to mark this one KILLED if it is killed
    tracker = tracking.MlflowTracker(client, run_id, root=ws.root)
    ok = False
    try:
        result = update_steps(p, ws, data, champion, warm, champion_model, seen, work, run_id, tracker, started)
        ok = True
        return result
    finally:
        tracking.end_run(client, run_id, ok)
        if ok:
            shutil.rmtree(work, ignore_errors=True)


def update_steps(p, ws, data, champion, warm, champion_model, seen, work, run_id, tracker, started) -> dict:
    from components.kit import batches

    batch = work / "batch"
    card = ingest_batch(p, ws, data, batch, tracker)
    known = next((b for b in seen if b["sha256"] == card["sha256"]), None)
    if known is not None:
        print(
            f"[update] nothing new: version {champion.version} has learned this data (batch {known['name']})",
            flush=True,
        )
        return {"skipped": True, "version": str(champion.version), "batch": known["name"], "run_id": run_id}
    name = unique_name(batches.batch_name(data), [b["name"] for b in seen])
    earlier = batches.earlier_batches(warm)
    dropped = batches.drop_seen(batch, list(earlier.values()))
    labels = batches.read_labels(warm / "teacher")
    batches.check_labels(batch, labels, f"the champion (version {champion.version})")
    validate_batch(p, batch, labels, work / "validation", tracker)
    print(f"[update] batch {name}: {card['rows']} rows ({dropped} dropped: already in an earlier batch)", flush=True)

    # transform: update teacher and student, export, quantize
    trained = train_update(p, warm, batch, name, work / "next", tracker)
    chosen = export_and_quantize(
        p,
        work / "next" / "student",
        work / "next" / "prepared",
        work / "models",
        tracker,
        keep=shipped_variant(champion_model),
    )
    final = work / "models" / "final"

    # load: every batch measured, the forgetting gate, the registry, the workspace
    after, before, paired = evaluate_batches(p, final, champion_model, batches.earlier_batches(work / "next"))
    rows = per_batch(before, after, name, paired)
    decision = decide(rows, p.incremental.max_forgetting_points, p.incremental.min_new_batch_accuracy)
    grown = int(trained.get("student.grown_params", 0))
    size = size_check(final, champion_model, p.register_.gate.max_size_growth_vs_champion, grown)
    decision = gate.GateDecision.of(decision.checks | {"size_growth_vs_champion": size})
    model_name = p.registered_model_name(continuing=champion.name)  # never a name made from the new batch
    elsewhere = against_current_champion(p, tracker.client, model_name, champion, final, after, work / "current")
    if elsewhere is not None:
        decision = gate.GateDecision.of(decision.checks | {"forgetting_vs_champion": elsewhere})
    from components.kit.modeling import dir_size_bytes

    report = build_report(
        p,
        champion,
        name,
        card,
        rows,
        decision,
        trained,
        chosen,
        time.perf_counter() - started,
        dir_size_bytes(final),
        dropped,
    )
    report_path = work / "update_report.json"
    report_path.write_text(json.dumps(report, indent=2))
    all_seen = seen + [{"name": name, "sha256": card["sha256"]}]
    tags = version_tags(p, ws, champion, report, all_seen, run_id)
    version = registry.log_version(TASK, p, run_id, final, report_path, tags, model_name)
    log_next_warm_start(tracker.client, run_id, work / "next")
    why = "forgetting gate passed" if decision.passed else f"forgetting gate refused: {report['reason']}"
    alias = registry.settle_version(tracker, ws.root, model_name, version, decision, why, by="miniaturize update")
    tracker.log_metrics(
        {
            "mean_accuracy": report["mean_accuracy"] or 0.0,
            "forgetting_points": report["forgetting_points"] if report["forgetting_points"] is not None else math.nan,
            "update_seconds": report["cost"]["seconds"],
            "examples": float(report["cost"]["examples"]),
        }
        | {f"accuracy.{r['batch']}": r["after"] for r in rows if r["after"] is not None}
    )
    report_md = registry.write_version_report(
        ws.reports / REPORT_DIR, version, alias, report, render_markdown(report), tracker
    )
    dvc_line = put_in_workspace(ws, batch, name, work / "next" / "replay.parquet" if decision.passed else None)
    return {
        "skipped": False,
        "model_name": model_name,
        "version": version,
        "alias": alias,
        "parent_version": str(champion.version),
        "batch": name,
        "reason": why,
        "report": report,
        "report_md": report_md,
        "run_id": run_id,
        "dvc": dvc_line,
        "tracking_uri": redact(tracking.tracking_uri(ws.root)),
    }


def log_next_warm_start(client, run_id: str, folder: Path) -> None:
    """The next warm start (teacher, student, replay buffer, batches) as the version's `warm_start/`."""
    for item in ("teacher", "student", "batches"):
        client.log_artifacts(run_id, str(folder / item), f"{registry.WARM_START}/{item}")
    client.log_artifact(run_id, str(folder / "replay.parquet"), registry.WARM_START)
