"""Stage, evaluate of the multitask task: every task's accuracy and macro F1, size and latency of the
multitask models, beside the single-task baseline (one compressed student per task), and the gate.

Models measured on the test split (each task scored on the rows that carry its label):
- `teacher` (PyTorch), `onnx_fp32` and `final` (the shipped int8 multitask student), and
  `baseline_teacher_int8` (the teacher quantized alone), each answering every task in one call;
- `single_tasks`: the single-task students together (one int8 model per task, from the same chain), whose
  latency is the three models run one after another on the same sentence (each with its own tokenization,
  as a device running three models would), and whose size is their total on disk.

Latency: batch 1 (one sentence, every task answered) and batch 32, p50. The final model and the single-task
students are timed again in `cfg.rounds` alternating rounds (`components.kit.latency.time_rounds`, the order
rotated each round), each round giving each a share of the calls, so that a change in the machine's load
between the two affects both alike: their figures are the median over the rounds of each round's
percentile, with the spread of the round p50s (largest minus smallest, ms); the speedup is the ratio of the
medians.
Every ONNX session here runs without spin-waiting threads (`latency.load_onnx_session(spinning=False)`):
three sessions run one after another in one process otherwise keep each other's threads spinning on the
same cores, which would slow the baseline for a reason a device would not accept.

The gate (`components.kit.gate`): for every task, its accuracy drop against the teacher (at most
`register.gate.max_drop_vs_teacher_points`) and against its single-task student (at most
`multitask.max_drop_vs_single_points`); the size ratio and batch-1 speedup against the teacher as the
classification gate checks them. The report's `final_vs_teacher.accuracy_drop_points` is the worst task's.

Writes compression_report.json and .md into `out_dir`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import SPLITS, EvaluateConfig, GateConfig
from components.kit import latency
from components.kit.gate import GateDecision, compare_to_teacher, decide_multitask
from components.kit.heads import MISSING, Heads
from components.kit.latency import BATCH_SIZE
from components.kit.modeling import read_split
from components.kit.onnx_models import pad_id_of
from components.kit.report import (
    ModelSpec,
    environment_info,
    environment_line,
    fmt,
    gate_lines,
    gate_summary,
    versus_lines,
    write_report,
)
from components.kit.tracking import StageResult, Tracker

TEACHER, FINAL, BASELINE, SINGLES = "teacher", "final", "baseline_teacher_int8", "single_tasks"


def task_scores(predicted: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    """accuracy (0..1) and macro F1 over the task's labels on the rows that carry a label (`gold` holds
    MISSING elsewhere); None for both when no row does."""
    from sklearn.metrics import accuracy_score, f1_score

    known = gold != MISSING
    if not known.any():
        return {"accuracy": None, "f1_macro": None}
    y, p = gold[known], predicted[known]
    return {
        "accuracy": float(accuracy_score(y, p)),
        "f1_macro": float(f1_score(y, p, labels=list(range(n_labels)), average="macro", zero_division=0)),
    }


def mean_of(tasks: dict[str, dict], key: str) -> float | None:
    values = [t[key] for t in tasks.values() if t[key] is not None]
    return float(np.mean(values)) if values else None


@dataclass
class Loaded:
    """A model ready to answer: its runner, its encoded test split and per-call inputs, its facts."""

    runner: object
    input_ids: list[list[int]]
    pad_id: int
    runtime: str
    size_bytes: int
    params: int

    def calls(self, batch_size: int) -> list:
        return latency.batched_inputs(self.input_ids, self.pad_id, batch_size)


def load(spec: ModelSpec, texts: list[str], threads: int, max_length: int) -> Loaded:
    from transformers import AutoTokenizer

    folder = spec.path if spec.path.is_dir() else spec.path.parent
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    if latency.runtime_kind(spec.runtime) == "torch":
        model = latency.load_torch_model(spec.path, threads)
        runner = latency.torch_runner(model)
    else:
        # without spin-waiting: the single-task students run three sessions in one process (see the module)
        session = latency.load_onnx_session(spec.path, threads, spinning=False)
        model, runner = None, latency.onnx_runner(session)
    runtime, size, params = spec.weights_facts(model)
    return Loaded(runner, ids, pad_id_of(tokenizer), runtime, int(size), int(params))


def scores_of(loaded: Loaded, heads: Heads, gold: np.ndarray) -> dict[str, dict]:
    """{task: {accuracy, f1_macro}} of a multitask model."""
    logits = latency.runner_logits(loaded.runner, loaded.input_ids, loaded.pad_id)
    predicted = heads.predictions(logits)
    return {
        task: task_scores(predicted[task], gold[:, t], len(heads.tasks[task])) for t, task in enumerate(heads.tasks)
    }


def timed(fn, inputs: list, cfg: EvaluateConfig, calls: int) -> list[float]:
    return latency.time_calls(fn, inputs, min(cfg.warmup, len(inputs)), calls)


def latency_ms(batch1: list[float], batch32: list[float]) -> dict:
    one, many = latency.latency_stats(batch1), latency.latency_stats(batch32)
    return {"batch1_p50": one["p50"], "batch1_p95": one["p95"], "batch32_p50": many["p50"]}


def entry(loaded_runtime: str, tasks: dict, size: int, params: int, lat: dict) -> dict:
    return {
        "runtime": loaded_runtime,
        "accuracy": mean_of(tasks, "accuracy"),
        "f1_macro": mean_of(tasks, "f1_macro"),
        "tasks": tasks,
        "size_bytes": size,
        "params": params,
        "latency_ms": lat,
    }


def measure_multitask(spec: ModelSpec, cfg: EvaluateConfig, frame: pd.DataFrame, heads: Heads, max_length: int):
    """A multitask model's report entry, and the model loaded (the final one is timed again beside the
    single-task students)."""
    loaded = load(spec, frame["text"].tolist(), cfg.threads, max_length)
    gold = heads.gold(frame)
    tasks = scores_of(loaded, heads, gold)
    one = timed(loaded.runner, loaded.calls(1), cfg, cfg.batch1_calls)
    many = timed(loaded.runner, loaded.calls(BATCH_SIZE), cfg, cfg.batch32_calls)
    return entry(loaded.runtime, tasks, loaded.size_bytes, loaded.params, latency_ms(one, many)), loaded


def load_singles(folders: dict[str, Path], threads: int, frame: pd.DataFrame, heads: Heads, max_length: int):
    """Each task's single-task student loaded on the whole test split, and its scores on its task's rows."""
    gold = heads.gold(frame)
    loaded, tasks, sizes = {}, {}, {}
    for t, task in enumerate(heads.tasks):
        model = load(ModelSpec(task, folders[task], "onnxruntime"), frame["text"].tolist(), threads, max_length)
        logits = latency.runner_logits(model.runner, model.input_ids, model.pad_id)
        labels = json.loads((folders[task] / "labels.json").read_text())
        if labels != list(heads.tasks[task]):
            raise ValueError(f"the single-task student of {task} has labels {labels}, not {list(heads.tasks[task])}")
        tasks[task] = task_scores(logits.argmax(-1), gold[:, t], len(labels))
        loaded[task], sizes[task] = model, model.size_bytes
    return loaded, tasks, sizes


def all_tasks_inputs(loaded: dict[str, Loaded], batch_size: int) -> list[tuple]:
    """Per call, every single-task model's own inputs for the same sentences."""
    per_model = [m.calls(batch_size) for m in loaded.values()]
    return list(zip(*per_model, strict=True))


def alternate(final: Loaded, singles: dict[str, Loaded], cfg: EvaluateConfig) -> dict[str, dict]:
    """Batch-1 and batch-32 timings of the final model and of the single-task students run one after another,
    in `cfg.rounds` alternating rounds; the latency section of each (medians over the rounds and spreads,
    `latency.latency_figures`)."""
    runners = [m.runner for m in singles.values()]

    def run_all(feeds: tuple) -> None:
        for runner, feed in zip(runners, feeds, strict=True):
            runner(feed)

    fns = {FINAL: final.runner, SINGLES: run_all}
    stats: dict[int, dict[str, dict]] = {}
    for size, total in ((1, cfg.batch1_calls), (BATCH_SIZE, cfg.batch32_calls)):
        inputs = {FINAL: final.calls(size), SINGLES: all_tasks_inputs(singles, size)}
        warmup = min(cfg.warmup, min(len(calls) for calls in inputs.values()))
        rounds = latency.time_rounds(fns, inputs, warmup, total, cfg.rounds)
        stats[size] = {name: latency.round_stats(samples) for name, samples in rounds.items()}
    return {name: latency.latency_figures(stats[1][name], stats[BATCH_SIZE][name])[0] for name in fns}


def per_task_drops(better: dict, worse: dict) -> dict[str, float | None]:
    """Points of accuracy `worse` loses against `better`, per task."""
    out = {}
    for task, b in better["tasks"].items():
        w = worse["tasks"][task]
        out[task] = None if b["accuracy"] is None or w["accuracy"] is None else 100 * (b["accuracy"] - w["accuracy"])
    return out


def compare(reference: dict, final: dict) -> dict:
    """The classification ratios (size, speedups) with the worst task's accuracy drop, and each task's."""
    ratios = compare_to_teacher(reference, final)
    drops = per_task_drops(reference, final)
    known = [d for d in drops.values() if d is not None]
    ratios["accuracy_drop_points"] = max(known) if known else None
    return ratios | {f"accuracy_drop_points.{task}": d for task, d in drops.items()}


def seed_accuracies(
    final: Path | None, singles: dict[str, Path] | None, prepared: Path, threads: int, max_length: int
) -> dict:
    """Each task's test accuracy of a multitask final model and of each task's single-task final model
    (each when given): what the seeds stages record per seed."""
    prepared = Path(prepared)
    heads = Heads.from_card(json.loads((prepared / "data_card.json").read_text())["tasks"])
    frame = read_split(prepared, "test")
    row = {}
    if final is not None:
        loaded = load(ModelSpec(FINAL, Path(final), "onnxruntime"), frame["text"].tolist(), threads, max_length)
        row[FINAL] = {t: s["accuracy"] for t, s in scores_of(loaded, heads, heads.gold(frame)).items()}
    if singles is not None:
        _, tasks, _ = load_singles(singles, threads, frame, heads, max_length)
        row[SINGLES] = {t: s["accuracy"] for t, s in tasks.items()}
    return row


def seed_spread(entries: dict, seed: int | None, seed_runs: list[dict]) -> dict | None:
    """Each task's accuracy over the pipeline's own seed and the seeds stage's (`seed_runs`): of the final
    model, of its single-task student, and the drop between them (points), each as mean, std, min, max, n."""
    from components.kit.seeds import spread

    if not seed_runs:
        return None
    own = {"seed": seed, FINAL: {t: s["accuracy"] for t, s in entries[FINAL]["tasks"].items()}}
    if SINGLES in entries:
        own[SINGLES] = {t: s["accuracy"] for t, s in entries[SINGLES]["tasks"].items()}
    runs = [own, *seed_runs]
    tasks = {}
    for task in own[FINAL]:
        finals = [r[FINAL][task] for r in runs if r[FINAL].get(task) is not None]
        tasks[task] = {"final_accuracy": spread(finals)} if finals else {}
        if all(r.get(SINGLES) for r in runs):
            pairs = [(r[SINGLES][task], r[FINAL][task]) for r in runs if None not in (r[SINGLES][task], r[FINAL][task])]
            tasks[task] |= {
                "single_task_accuracy": spread([s for s, _ in pairs]),
                "drop_vs_single_task_points": spread([100 * (s - f) for s, f in pairs]),
            }
    return {"runs": runs, "tasks": tasks}


def add_seed_means(versus: dict, seeds: dict) -> None:
    """Each task's mean drop over seeds against its single-task student, and the worst task's, into the
    comparison (what the gate reads when seeds ran)."""
    means = {
        t: s["drop_vs_single_task_points"]["mean"]
        for t, s in seeds["tasks"].items()
        if "drop_vs_single_task_points" in s
    }
    if means:
        versus |= {f"accuracy_drop_points_seed_mean.{t}": m for t, m in means.items()}
        versus["accuracy_drop_points_seed_mean"] = max(means.values())


def build_report(card: dict, entries: dict, singles: dict | None, decision: GateDecision, environment: dict) -> dict:
    report = {
        "task": "multitask-classification",
        "tasks": {name: spec["labels"] for name, spec in card["tasks"].items()},
        "dataset": {
            "source": str(card.get("source", "")),
            "sha256": str(card.get("sha256", "")),
            "rows": {split: int(card.get("rows", {}).get(split, 0)) for split in SPLITS},
        },
        "models": entries,
        "final_vs_teacher": compare(entries[TEACHER], entries[FINAL]),
    }
    if BASELINE in entries:
        report[f"final_vs_{BASELINE}"] = compare(entries[BASELINE], entries[FINAL])
    if singles is not None:
        report["single_task_models"] = singles
        report[f"final_vs_{SINGLES}"] = compare(entries[SINGLES], entries[FINAL])
    report["gate"] = decision.as_dict()
    report["environment"] = environment
    return report


def metrics_to_log(report: dict) -> dict[str, float]:
    """Flat tracker metrics: `final.accuracy.sentiment`, `final.f1_macro.source`, `final.batch1_p50_ms`, ..."""
    out: dict[str, float] = {}
    for name, e in report["models"].items():
        for key in ("accuracy", "f1_macro", "size_bytes", "params"):
            if e.get(key) is not None:
                out[f"{name}.{key}"] = float(e[key])
        for task, scores in e["tasks"].items():
            out |= {f"{name}.{k}.{task}": float(v) for k, v in scores.items() if v is not None}
        out |= {f"{name}.{k}_ms": float(v) for k, v in e["latency_ms"].items()}
    for section in ("final_vs_teacher", f"final_vs_{BASELINE}", f"final_vs_{SINGLES}"):
        out |= {f"{section}.{k}": float(v) for k, v in report.get(section, {}).items() if v is not None}
    out["gate.passed"] = float(report["gate"]["passed"])
    return out


def render_markdown(report: dict) -> str:
    tasks = list(report["tasks"])
    lines = [
        f"# Multitask compression report ({', '.join(tasks)})",
        "",
        f"Data: {report['dataset']['source']} (sha256 {report['dataset']['sha256'][:12]}), "
        f"test rows {report['dataset']['rows']['test']:,}.",
        "",
        "| model | runtime | "
        + " | ".join(f"{t} acc | {t} F1" for t in tasks)
        + " | size (MB) | all tasks batch-1 p50 (ms) | batch-32 p50 (ms) |",
        "|---|---|" + "---:|---:|" * len(tasks) + "---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        cells = " | ".join(
            f"{fmt(m['tasks'][t]['accuracy'], '.4f')} | {fmt(m['tasks'][t]['f1_macro'], '.4f')}" for t in tasks
        )
        lat = m["latency_ms"]
        lines.append(
            f"| {name} | {m['runtime']} | {cells} | {m['size_bytes'] / 1e6:.1f} | "
            f"{fmt(lat['batch1_p50'], '.2f')} | {fmt(lat['batch32_p50'], '.2f')} |"
        )
    for section, title in (
        (f"final_vs_{SINGLES}", "Final vs the single-task students together"),
        ("final_vs_teacher", "Final vs teacher"),
        (f"final_vs_{BASELINE}", "Final vs the teacher quantized alone"),
    ):
        if section in report:
            r = report[section]
            figures = {
                "size ratio": fmt(r["size_ratio"], ".2f"),
                "speedup, batch-1 p50": fmt(r["speedup_batch1_p50"], ".2f"),
                "speedup, batch-32 p50": fmt(r.get("speedup_batch32_p50"), ".2f"),
            } | {f"accuracy drop, {t} (points)": fmt(r[f"accuracy_drop_points.{t}"], "+.2f") for t in tasks}
            lines += versus_lines(title, figures)
    if "seeds" in report:
        runs = report["seeds"]["runs"]
        lines += [
            "",
            f"## Over {len(runs)} seeds (seeds {', '.join(str(r['seed']) for r in runs)}: the student chains "
            "re-trained, the teacher fixed)",
            "",
            "| task | final acc mean (std) | single-task acc mean (std) | drop vs single-task, mean (points) |",
            "|---|---:|---:|---:|",
        ]
        for task, s in report["seeds"]["tasks"].items():
            final, single = s.get("final_accuracy", {}), s.get("single_task_accuracy", {})
            drop = s.get("drop_vs_single_task_points", {})
            lines.append(
                f"| {task} | {fmt(final.get('mean'), '.4f')} ({fmt(final.get('std'), '.4f')}) | "
                f"{fmt(single.get('mean'), '.4f')} ({fmt(single.get('std'), '.4f')}) | {fmt(drop.get('mean'), '+.2f')} |"
            )
    lines += gate_lines(report["gate"])
    env = report["environment"]
    lines += ["", f"Measured {environment_line(env)}"]
    return "\n".join(lines) + "\n"


def run(
    cfg: EvaluateConfig,
    gate_cfg: GateConfig,
    max_drop_vs_single: float,
    prepared: Path,
    models: list[ModelSpec],
    singles: dict[str, Path] | None,
    out_dir: Path,
    tracker: Tracker,
    max_length: int = 64,
    seed: int | None = None,
    seed_runs: list[dict] = (),
) -> StageResult:
    """`models`: the multitask models (teacher and final at least); `singles`: each task's single-task final
    model folder (None: no baseline); `seed_runs`: the seeds stage's rows (the chains re-trained with other
    seeds), `seed` the pipeline's own."""
    prepared, out_dir = Path(prepared), Path(out_dir)
    models = ModelSpec.checked(models, (TEACHER, FINAL))
    card = json.loads((prepared / "data_card.json").read_text())
    heads = Heads.from_card(card["tasks"])
    frame = read_split(prepared, "test")
    tracker.log_params(
        {f"evaluate.{k}": v for k, v in cfg.model_dump().items()}
        | {"evaluate.models": ",".join(m.name for m in models), "evaluate.max_length": max_length}
    )
    entries, loaded = {}, {}
    for spec in models:
        entries[spec.name], loaded[spec.name] = measure_multitask(spec, cfg, frame, heads, max_length)
        print(f"  evaluate {spec.name}: {describe(entries[spec.name])}", flush=True)
        if spec.name != FINAL:
            del loaded[spec.name]
    single_models = None
    if singles is not None:
        single_loaded, tasks, sizes = load_singles(singles, cfg.threads, frame, heads, max_length)
        timings = alternate(loaded[FINAL], single_loaded, cfg)
        entries[FINAL]["latency_ms"] = timings[FINAL]
        total_params = sum(m.params for m in single_loaded.values())
        entries[SINGLES] = entry(
            "onnxruntime, one model per task", tasks, sum(sizes.values()), total_params, timings[SINGLES]
        )
        single_models = {t: {"size_bytes": sizes[t], "runtime": single_loaded[t].runtime, **tasks[t]} for t in tasks}
        print(f"  evaluate {SINGLES}: {describe(entries[SINGLES])}", flush=True)
    vs_teacher = compare(entries[TEACHER], entries[FINAL])
    vs_singles = compare(entries[SINGLES], entries[FINAL]) if singles is not None else None
    seeds = seed_spread(entries, seed, list(seed_runs))
    if seeds is not None and vs_singles is not None:
        add_seed_means(vs_singles, seeds)
    decision = decide_multitask(vs_teacher, vs_singles, gate_cfg, max_drop_vs_single)
    report = build_report(card, entries, single_models, decision, environment_info(cfg.threads))
    if seeds is not None:
        report["seeds"] = seeds
        report[f"final_vs_{SINGLES}"] = vs_singles

    json_path, md_path = write_report(out_dir, report, render_markdown)
    for path in (json_path, md_path):
        tracker.log_artifact(path)
    tracker.log_metrics(metrics_to_log(report))
    against = (
        f"{vs_teacher['size_ratio']:.2f}x smaller and {vs_teacher['speedup_batch1_p50']:.2f}x faster than the "
        f"teacher, worst task {fmt(vs_teacher['accuracy_drop_points'], '+.2f')} points"
    )
    if vs_singles is not None:
        against += (
            f"; against the {len(singles)} single-task students: {vs_singles['size_ratio']:.2f}x smaller, "
            f"{vs_singles['speedup_batch1_p50']:.2f}x faster at batch 1, worst task "
            f"{fmt(vs_singles['accuracy_drop_points'], '+.2f')} points"
            + (
                f" ({fmt(vs_singles['accuracy_drop_points_seed_mean'], '+.2f')} as the mean of "
                f"{len(seeds['runs'])} seeds)"
                if seeds is not None and "accuracy_drop_points_seed_mean" in vs_singles
                else ""
            )
        )
    print(gate_summary(decision, against), flush=True)
    metrics = {k: v for k, v in vs_teacher.items() if v is not None} | {"gate_passed": float(decision.passed)}
    if vs_singles is not None:
        metrics |= {f"vs_{SINGLES}.{k}": v for k, v in vs_singles.items() if v is not None}
    return StageResult(metrics=metrics, outputs={"report": json_path, "markdown": md_path}, info={"report": report})


def describe(e: dict) -> str:
    tasks = ", ".join(f"{t} {fmt(s['accuracy'], '.4f')}" for t, s in e["tasks"].items())
    return (
        f"{e['runtime']}, acc {tasks}; batch-1 p50 {e['latency_ms']['batch1_p50']:.2f} ms, "
        f"batch-32 p50 {e['latency_ms']['batch32_p50']:.2f} ms, {e['size_bytes'] / 1e6:.1f} MB"
    )


def split_accuracy(model: Path, prepared: Path, split: str, threads: int, max_length: int) -> float | None:
    """The mean over tasks of an ONNX multitask model folder's accuracy on one split of `prepared` (what the
    registry compares a champion by); None for an empty split."""
    prepared = Path(prepared)
    heads = Heads.from_card(json.loads((prepared / "data_card.json").read_text())["tasks"])
    frame = read_split(prepared, split)
    if frame.empty:
        return None
    loaded = load(ModelSpec("model", Path(model), "onnxruntime"), frame["text"].tolist(), threads, max_length)
    return mean_of(scores_of(loaded, heads, heads.gold(frame)), "accuracy")
