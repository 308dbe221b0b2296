"""Stage, evaluate: measure every model the pipeline built on the same test split and machine, and gate.

`run(cfg, gate_cfg, prepared, models, out_dir, tracker)` scores each `ModelSpec` (PyTorch folder or ONNX
folder/file) on the test split: accuracy, macro F1, agreement with the teacher's predictions, weight
bytes, parameters, batch-1 and batch-32 latency (`cfg.threads` intra-op threads for every model) and the
peak RSS of a fresh process serving it (for a spec with `memory`, unless `cfg.rss_sentences` is 0; None for
the chain's intermediates). It then compares "final" with "teacher" (and with "baseline_teacher_int8", the
teacher merely quantized, when present), applies the release gate (`components.kit.gate`), and writes three
files to `out_dir`, each atomically:

- compression_report.json: the machine-readable report (schema in `build_report`);
- compression_report.md: the same as readable tables;
- compression_plot.png: accuracy against batch-1 latency and against size, one labelled point per model.

Latency is timed like a benchmark (`time_models`, `components.kit.latency.time_rounds`): every model is
loaded and scored first and stays loaded (a few hundred MB at this project's sizes), then the models take
turns in `cfg.rounds` rounds, each round in a rotated order (teacher, final, baseline, ...; then final,
baseline, ..., teacher; ...), each with its share of `cfg.batch1_calls` / `cfg.batch32_calls`. A model's
`latency_ms.batch1_p50` (and `batch1_p95`, `batch32_p50`, `batch32_p95`) is the median over the rounds of each
round's percentile, which the gate and the comparisons read; `batch1_p50_spread` (and `batch32_p50_spread`) is
the largest round p50 minus the smallest, in ms; `latency_rounds_ms` holds each round's figures, and the
report's `timing` section the rounds and calls. So a change in the machine's load during the stage falls on
every model alike and shows as spread, instead of moving one model's figure and the speed-ups. At a round's
start the previous model's threads may still spin-wait for a moment; a round's median over tens of calls
absorbs the one slow call that can give. Peak RSS is measured after the timing, so no probe process competes
with it.

Models named "teacher" and "final" are required. Sizes: a PyTorch folder's weight files
(`modeling.dir_size_bytes`); an ONNX model's .onnx file plus its external data (`kit.latency.onnx_size_bytes`).
A figure that cannot be measured (accuracy, F1 or agreement on an empty split) is None: null in the JSON,
"n/a" in the markdown, and a failed gate check, never a number.

With the distill stage's ablation, the report's `ablation` section holds the test accuracy of three
students of one architecture and initialisation: `labels_only` (no teacher), `kd_train_only` (the teacher's
soft targets on the train split) and `kd_with_transfer` (the same plus the unlabelled transfer set, the
pipeline's student; None when the run used no transfer set), so each factor's gain is shown on its own.

`split_accuracy` scores one ONNX classifier on one split, no timing: the register flow uses it to
re-measure the champion on a candidate's data.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.config import SPLITS, EvaluateConfig, GateConfig
from components.kit import latency
from components.kit.files import write_atomic
from components.kit.gate import GateDecision, compare_to_teacher, decide
from components.kit.latency import BATCH_SIZE
from components.kit.modeling import Encoded, encode, read_split
from components.kit.onnx_models import pad_id_of
from components.kit.progress import progress
from components.kit.report import (
    ModelSpec,
    environment_info,
    environment_line,
    fmt,
    gate_lines,
    gate_summary,
    versus_lines,
    with_spread,
    write_report,
)
from components.kit.seeds import summarise as summarise_seeds
from components.kit.tracking import StageResult, Tracker

REPORT_PLOT = "compression_plot.png"  # beside the report files of `kit.report.write_report`
TEACHER, FINAL, BASELINE = "teacher", "final", "baseline_teacher_int8"
SPREAD = "largest minus smallest round p50 (ms)"  # what a `*_p50_spread` figure is, as the report states it


# ---------------------------------------------------------------- pure helpers


def agreement(predictions: np.ndarray, reference: np.ndarray) -> float | None:
    """Share of sentences with the same predicted label; None for an empty split (nothing to agree on)."""
    if len(predictions) != len(reference):
        raise ValueError(f"different numbers of predictions: {len(predictions)} and {len(reference)}")
    return float((np.asarray(predictions) == np.asarray(reference)).mean()) if len(reference) else None


def classification_scores(predictions: np.ndarray, labels: np.ndarray, n_labels: int) -> dict:
    """accuracy (0..1) and macro F1 over every label, a label never predicted scoring 0; both None for an
    empty split, where neither is defined."""
    from sklearn.metrics import accuracy_score, f1_score

    if len(labels) == 0:
        return {"accuracy": None, "f1_macro": None}
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1_macro": float(
            f1_score(labels, predictions, labels=list(range(n_labels)), average="macro", zero_division=0)
        ),
    }


def metrics_to_log(report: dict) -> dict[str, float]:
    """Flat tracker metrics: `final.accuracy`, `final.batch1_p50_ms`, `final_vs_teacher.size_ratio`, ..."""
    out: dict[str, float] = {}
    for name, entry in report["models"].items():
        for key in ("accuracy", "f1_macro", "size_bytes", "params", "peak_rss_mb", "agreement_with_teacher"):
            if entry.get(key) is not None:  # a figure not measured is absent, not 0
                out[f"{name}.{key}"] = float(entry[key])
        for key, value in entry["latency_ms"].items():
            out[f"{name}.{key}_ms"] = float(value)
    for section in ("final_vs_teacher", f"final_vs_{BASELINE}"):
        for key, value in report.get(section, {}).items():
            if value is not None:
                out[f"{section}.{key}"] = float(value)
    for key, value in report.get("seeds", {}).items():
        if key != "runs":
            out |= {f"seeds.{key}.{stat}": float(v) for stat, v in value.items()}
    if budget := report.get("accuracy_budget"):
        out["budget.budget_points"] = float(budget["budget_points"])
        spent = budget["spent_points"] | {"total": budget["total_spent_points"]}
        out |= {f"budget.spent.{name}_points": float(v) for name, v in spent.items() if v is not None}
    out["gate.passed"] = float(report["gate"]["passed"])
    return out


def build_report(
    card: dict, entries: dict[str, dict], decision: GateDecision, environment: dict, timing: dict | None = None
) -> dict:
    """The compression report: dataset, one entry per model, the ratios, the gate, the environment (the machine,
    `kit.report.environment_info`) and how latency was timed (`timing_section`)."""
    report = {
        "task": "sequence-classification",
        "dataset": {
            "source": str(card.get("source", "")),
            "sha256": str(card.get("sha256", "")),
            "rows": {split: int(card.get("rows", {}).get(split, 0)) for split in SPLITS},
        },
        "models": entries,
        "final_vs_teacher": compare_to_teacher(entries[TEACHER], entries[FINAL]),
    }
    if BASELINE in entries:
        report[f"final_vs_{BASELINE}"] = compare_to_teacher(entries[BASELINE], entries[FINAL])
    report["gate"] = decision.as_dict()
    report["environment"] = environment
    if timing is not None:
        report["timing"] = timing
    return report


def timing_section(cfg: EvaluateConfig) -> dict:
    """How the latency figures were timed: the rounds, the warm-up calls per model and batch size, the timed
    calls of each round (per model) and what the spread is."""
    return {
        "rounds": cfg.rounds,
        "warmup": cfg.warmup,
        "batch1_calls_per_round": latency.calls_per_round(cfg.batch1_calls, cfg.rounds),
        "batch32_calls_per_round": latency.calls_per_round(cfg.batch32_calls, cfg.rounds),
        "statistic": "median over rounds of each round's percentile",
        "spread": SPREAD,
    }


def gain_points(better: float | None, base: float | None) -> float | None:
    """better minus base accuracy in percentage points; None when either was not measured."""
    return None if better is None or base is None else 100.0 * (better - base)


def distillation_ablation(student_dir: Path) -> dict | None:
    """What distillation and the transfer set each bought, from the distill stage's metrics.json when it
    trained the ablation: test accuracy of `labels_only`, `kd_train_only` and `kd_with_transfer` (None when
    no transfer set was used: then the student itself is `kd_train_only`), and the two gains in points."""
    path = Path(student_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    if "ablation.labels_only.test_accuracy" not in metrics:
        return None
    labels_only = metrics["ablation.labels_only.test_accuracy"]
    with_transfer = "ablation.kd_train_only.test_accuracy" in metrics
    kd_train_only = metrics["ablation.kd_train_only.test_accuracy"] if with_transfer else metrics["test_accuracy"]
    kd_with_transfer = metrics["test_accuracy"] if with_transfer else None
    return {
        "labels_only": labels_only,
        "kd_train_only": kd_train_only,
        "kd_with_transfer": kd_with_transfer,
        "transfer_rows": int(metrics.get("transfer_rows", 0)),
        "kd_gain_points": gain_points(kd_train_only, labels_only),
        "transfer_gain_points": gain_points(kd_with_transfer, kd_train_only) if with_transfer else None,
    }


def accuracy_budget(pruned_dir: Path, final_dir: Path) -> dict | None:
    """How much of the accuracy budget each technique spent, in validation points, from the prune stage's
    metrics.json (when it pruned against a budget) and the quantize stage's quantize_report.json: distillation
    (teacher to student), pruning (student to pruned), trim and export (pruned in PyTorch to the fp32 export)
    and quantization (fp32 export to the shipped model). None for fixed-ratio pruning."""
    path = Path(pruned_dir) / "metrics.json"
    pruned = json.loads(path.read_text()) if path.is_file() else {}
    if "budget_points" not in pruned:
        return None
    path = Path(final_dir) / "quantize_report.json"
    quantized = json.loads(path.read_text()) if path.is_file() else {}
    fp32, shipped = quantized.get("accuracy_fp32_validation"), quantized.get("accuracy_int8_validation")
    spent = {
        "distill": pruned["budget_spent_distill_points"],
        "prune": pruned["budget_spent_prune_points"],
        "trim_and_export": gain_points(pruned["val_accuracy"], fp32),
        "quantize": gain_points(fp32, shipped),
    }
    return {
        "budget_points": pruned["budget_points"],
        "teacher_val_accuracy": pruned["teacher_val_accuracy"],
        "spent_points": spent,
        "total_spent_points": gain_points(pruned["teacher_val_accuracy"], shipped),
        "prune_steps_taken": pruned["steps_taken"],
        "prune_step_undone": pruned["step_undone"] or None,
        # the pruned model's one-sided upper bound of its spent points, and what it had to stay within
        "confidence": pruned.get("budget_confidence"),
        "spent_bound_points": pruned.get("budget_spent_bound_points"),
        "bound_limit_points": pruned["budget_points"] + pruned.get("budget_margin_points", 0.0),
    }


def budget_lines(budget: dict) -> list[str]:
    """The accuracy budget's spending as a markdown section."""
    names = {
        "distill": "distillation",
        "prune": "pruning",
        "trim_and_export": "vocabulary trim and ONNX export",
        "quantize": "quantization",
    }
    undone = budget["prune_step_undone"]
    lines = [
        "",
        "## Accuracy budget",
        "",
        f"Pruning was given {budget['budget_points']:.2f} validation points below the teacher "
        f"({budget['teacher_val_accuracy']:.4f}); it took {budget['prune_steps_taken']} step(s)"
        + (f" and undid step {undone}, which went over" if undone else "")
        + ". Points spent on validation by each technique (negative: it gained):",
        "",
        "| technique | points spent |",
        "|---|---:|",
    ]
    lines += [f"| {names[k]} | {fmt(v, '+.2f')} |" for k, v in budget["spent_points"].items()]
    lines.append(f"| **total, teacher to shipped model** | **{fmt(budget['total_spent_points'], '+.2f')}** |")
    if budget.get("spent_bound_points") is not None:
        lines += [
            "",
            f"Validation is not test: the pruned model's spent points have a one-sided upper bound of "
            f"{budget['spent_bound_points']:+.2f} at {budget['confidence']:.0%} confidence (spent + z x the "
            f"standard error of the paired difference with the teacher), which every step had to keep "
            f"within {budget['bound_limit_points']:.2f}.",
        ]
    return lines


# ---------------------------------------------------------------- measuring one model


def model_labels(model_dir: Path, fallback: list[str]) -> list[str]:
    """The model's output order (labels.json), or the data card's labels when the folder has none."""
    file = model_dir / "labels.json"
    return json.loads(file.read_text()) if file.is_file() else list(fallback)


@dataclass(frozen=True)
class EvalSplit:
    """The sentences models are scored on: one split's texts and gold label names, the data card's labels (the
    output order of a model folder without labels.json), the token limit they are cut to, and the prepared
    folder they come from (the peak-RSS probe reads it)."""

    prepared: Path
    texts: list[str]
    gold: list[str]
    card_labels: list[str]
    max_length: int

    @classmethod
    def read(cls, prepared: Path, split: str, card_labels: list[str], max_length: int) -> EvalSplit:
        frame = read_split(prepared, split)
        return cls(prepared, frame["text"].tolist(), frame["label"].tolist(), card_labels, max_length)

    def encoded_for(self, folder: Path) -> tuple[Encoded, list[str], int]:
        """The sentences as the model in `folder` reads them: encoded by its tokenizer against its label order,
        that order (`model_labels`), and its padding id."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        labels = model_labels(folder, self.card_labels)
        return encode(tokenizer, self.texts, self.gold, labels, self.max_length), labels, pad_id_of(tokenizer)


def predicted_classes(runner, input_ids: list[list[int]], pad_id: int) -> np.ndarray:
    """The highest-scoring class of each sentence; an empty array for no sentences."""
    if not input_ids:
        return np.zeros(0, dtype=np.int64)
    return latency.runner_logits(runner, input_ids, pad_id).argmax(-1)


@dataclass
class Timed:
    """What the timing rounds need of a loaded model: its runner and its test sentences in batches of 1 and
    of `BATCH_SIZE`, tokenised and padded before any clock starts."""

    runner: latency.Runner
    batches: dict[int, list[latency.Batch]]


def measure_model(spec: ModelSpec, cfg: EvaluateConfig, split: EvalSplit) -> tuple[dict, np.ndarray, Timed]:
    """One report entry without its latency, peak RSS and agreement (None until `measure_all` fills them), the
    predicted label names, and the loaded model for the timing rounds."""
    data, labels, pad_id = split.encoded_for(spec.path if spec.path.is_dir() else spec.path.parent)
    if latency.runtime_kind(spec.runtime) == "torch":
        model = latency.load_torch_model(spec.path, cfg.threads)
        runner = latency.torch_runner(model)
    else:
        model, runner = None, latency.onnx_runner(latency.load_onnx_session(spec.path, cfg.threads))
    runtime, size, params = spec.weights_facts(model)
    predicted = predicted_classes(runner, data.input_ids, pad_id)
    entry = {
        "runtime": runtime,
        **classification_scores(predicted, data.labels, len(labels)),
        "size_bytes": int(size),
        "params": int(params),
        "latency_ms": None,
        "latency_rounds_ms": None,
        "peak_rss_mb": None,
    }
    batches = {n: latency.batched_inputs(data.input_ids, pad_id, n) for n in (1, BATCH_SIZE)}
    names = np.asarray(labels, dtype=object)[predicted] if len(predicted) else np.array([], dtype=object)
    return entry, names, Timed(runner, batches)


def time_models(timed: dict[str, Timed], cfg: EvaluateConfig) -> dict[str, tuple[dict, dict]]:
    """Every model's (`latency_ms`, `latency_rounds_ms`) from batch-1 then batch-32 timing in alternating
    rounds (`latency.time_rounds`, `latency.latency_figures`)."""
    series = ((1, cfg.batch1_calls), (BATCH_SIZE, cfg.batch32_calls))
    rounds_run = sum(len(latency.calls_per_round(total, cfg.rounds)) for _, total in series)
    # On a log or the Prefect UI, a line per round (every model's share of it).
    bar = progress(None, "evaluate latency", total=len(timed) * rounds_run, unit="share", every=len(timed))

    def after_share(name: str, r: int, samples: list[float]) -> None:
        bar.update(1)
        bar.set_postfix_str(f"round {r + 1}: {name} p50 {latency.latency_stats(samples)['p50']:.2f} ms")

    stats: dict[int, dict[str, dict]] = {}
    for size, total in series:
        rounds = latency.time_rounds(
            {name: t.runner for name, t in timed.items()},
            {name: t.batches[size] for name, t in timed.items()},
            cfg.warmup,
            total,
            cfg.rounds,
            after_share,
        )
        stats[size] = {name: latency.round_stats(samples) for name, samples in rounds.items()}
    bar.close()
    return {name: latency.latency_figures(stats[1][name], stats[BATCH_SIZE][name]) for name in timed}


def split_correct(model: Path, prepared: Path, split: str, threads: int, max_length: int) -> np.ndarray | None:
    """Whether an ONNX classifier folder (model.onnx, its tokenizer and labels.json) answers each sentence of
    one split of `prepared` right (booleans, in the split's order), predicted as `measure_model` predicts;
    None for an empty split."""
    model, prepared = Path(model), Path(prepared)
    card = json.loads((prepared / "data_card.json").read_text())
    sentences = EvalSplit.read(prepared, split, card["labels"], max_length)
    if not sentences.texts:
        return None
    data, _, pad_id = sentences.encoded_for(model)
    runner = latency.onnx_runner(latency.load_onnx_session(model, threads))
    return np.asarray(predicted_classes(runner, data.input_ids, pad_id)) == np.asarray(data.labels)


def split_accuracy(model: Path, prepared: Path, split: str, threads: int, max_length: int) -> float | None:
    """Accuracy (0..1) of an ONNX classifier folder on one split of `prepared` (`split_correct`), scored as
    `measure_model` scores it; None for an empty split."""
    correct = split_correct(model, prepared, split, threads, max_length)
    return None if correct is None else float(correct.mean())


# ---------------------------------------------------------------- writing


def ablation_lines(ablation: dict) -> list[str]:
    """The three students of the distillation ablation as a markdown section."""
    rows = [
        ("labels only (no teacher)", ablation["labels_only"], None),
        ("distilled, train split", ablation["kd_train_only"], ablation["kd_gain_points"]),
    ]
    if ablation["kd_with_transfer"] is not None:
        rows.append(
            (
                f"distilled, train split + transfer set ({ablation['transfer_rows']:,} sentences)",
                ablation["kd_with_transfer"],
                ablation["transfer_gain_points"],
            )
        )
    lines = [
        "",
        "## Ablation: what distillation buys",
        "",
        "The same student (same layers, same initialisation, same epochs), trained three ways; each row "
        "adds one thing to the row above.",
        "",
        "| student | test accuracy | gain over the row above (points) |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {fmt(accuracy, '.4f')} | {'-' if i == 0 else fmt(gain, '+.2f')} |"
        for i, (name, accuracy, gain) in enumerate(rows)
    ]
    return lines


def render_markdown(report: dict) -> str:
    lines = [
        "# Compression report",
        "",
        f"Dataset `{report['dataset']['source']}` (sha256 `{report['dataset']['sha256'][:12]}`), "
        f"test rows: {report['dataset']['rows']['test']}. Latency and memory {environment_line(report['environment'])}",
        "",
        "| model | runtime | accuracy | F1 macro | agreement | size (MB) | params | batch-1 p50 ms (spread) "
        "| batch-1 p95 (ms) | batch-32 p50 ms (spread) | peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        lat = m["latency_ms"]
        lines.append(
            f"| {name} | {m['runtime']} | {fmt(m['accuracy'], '.4f')} | {fmt(m['f1_macro'], '.4f')} "
            f"| {fmt(m['agreement_with_teacher'], '.4f')} | {m['size_bytes'] / 1e6:.2f} "
            f"| {m['params']:,} | {with_spread(lat, 'batch1_p50')} | {fmt(lat['batch1_p95'], '.2f')} "
            f"| {with_spread(lat, 'batch32_p50')} | {fmt(m['peak_rss_mb'], '.0f')} |"
        )
    if timing := report.get("timing"):
        lines += [
            "",
            f"Latency: every model loaded first, then timed in {timing['rounds']} alternating rounds (the order "
            f"rotated each round) after {timing['warmup']} warm-up calls; each figure is the median over the rounds "
            "of that round's percentile; the spread, in brackets, is the largest round p50 minus the smallest (ms). "
            f"Calls per round: batch 1 {timing['batch1_calls_per_round']}, batch 32 {timing['batch32_calls_per_round']}.",
        ]
    for section in ("final_vs_teacher", f"final_vs_{BASELINE}"):
        if section in report:
            r = report[section]
            lines += versus_lines(
                section.replace("_", " "),
                {
                    "size ratio": f"{fmt(r['size_ratio'], '.2f')}x",
                    "batch-1 speed-up": f"{fmt(r['speedup_batch1_p50'], '.2f')}x",
                    "batch-32 speed-up": f"{fmt(r['speedup_batch32_p50'], '.2f')}x",
                    "accuracy drop (points)": fmt(r["accuracy_drop_points"], "+.2f"),
                },
            )
    lines += gate_lines(report["gate"])
    if budget := report.get("accuracy_budget"):
        lines += budget_lines(budget)
    if ablation := report.get("ablation"):
        lines += ablation_lines(ablation)
    if seeds := report.get("seeds"):
        drop = seeds["accuracy_drop_points"]
        lines += [
            "",
            f"## Seed spread ({drop['n']} training seeds, teacher and data fixed)",
            "",
            "| seed | final accuracy | drop vs teacher (points) | agreement with teacher |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['seed']} | {r['accuracy']:.4f} | {r['accuracy_drop_points']:+.2f} "
            f"| {r['agreement_with_teacher']:.4f} |"
            for r in seeds["runs"]
        ]
        lines += [
            "",
            f"Accuracy drop vs teacher: mean {drop['mean']:+.2f} points, std {drop['std']:.2f}, "
            f"range {drop['min']:+.2f} to {drop['max']:+.2f}.",
        ]
        if base := seeds.get("accuracy_drop_vs_baseline_points"):
            lines[-1] += (
                f" Against {BASELINE}: mean {base['mean']:+.2f} points, range {base['min']:+.2f} to {base['max']:+.2f}."
            )
    return "\n".join(lines) + "\n"


def save_plot(report: dict, path: Path) -> None:
    """Two panels: accuracy vs batch-1 p50 latency (log x) and accuracy vs size (MB), points labelled."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    latency_ax, size_ax = fig.subplots(1, 2)
    for i, (name, m) in enumerate(report["models"].items()):
        if m["accuracy"] is None:
            continue  # not measured: no point to place
        accuracy = 100 * m["accuracy"]
        for ax, x in ((latency_ax, m["latency_ms"]["batch1_p50"]), (size_ax, m["size_bytes"] / 1e6)):
            if x is None or not math.isfinite(x) or x <= 0:
                continue
            ax.scatter([x], [accuracy], color=f"C{i}")
            # Labels alternate above and below: models of equal size or accuracy often sit on one spot.
            ax.annotate(
                name,
                (x, accuracy),
                textcoords="offset points",
                xytext=(5, 5 if i % 2 == 0 else -12),
                fontsize=8,
                color=f"C{i}",
            )
    latency_ax.set_xscale("log")
    latency_ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # ticks at 1, 2, 5, 10, 20, ...
    latency_ax.xaxis.set_major_formatter(ScalarFormatter())
    latency_ax.xaxis.set_minor_formatter(NullFormatter())
    latency_ax.set(
        xlabel="batch-1 p50 latency (ms, log scale)", ylabel="test accuracy (%)", title="Accuracy vs latency"
    )
    size_ax.set(xlabel="size (MB)", ylabel="test accuracy (%)", title="Accuracy vs size")
    for ax in (latency_ax, size_ax):
        ax.grid(True, alpha=0.3)
    fig.savefig(path, format="png", dpi=120)


# ---------------------------------------------------------------- the stage


def measure_all(models: list[ModelSpec], cfg: EvaluateConfig, split: EvalSplit) -> dict[str, dict]:
    """Every model's report entry, in order, with its agreement with the teacher's predictions: all models
    loaded and scored, then timed in alternating rounds, then released, then their peak RSS measured one
    fresh process at a time (none when `rss_sentences` is 0). torch's thread count is set for the PyTorch models
    and restored afterwards."""
    import torch

    threads_before = torch.get_num_threads()
    entries: dict[str, dict] = {}
    predictions: dict[str, np.ndarray] = {}
    timed: dict[str, Timed] = {}
    try:
        for spec in progress(models, "evaluate: load and score", unit="model", every=1):
            entries[spec.name], predictions[spec.name], timed[spec.name] = measure_model(spec, cfg, split)
        for name, (latency_ms, rounds_ms) in time_models(timed, cfg).items():
            entries[name] |= {"latency_ms": latency_ms, "latency_rounds_ms": rounds_ms}
    finally:
        torch.set_num_threads(threads_before)
        timed.clear()  # the runners: every model's memory is released before the RSS probes
        gc.collect()
    for spec in models:
        e = entries[spec.name]
        if spec.memory and cfg.rss_sentences:
            e["peak_rss_mb"] = float(
                latency.peak_rss_mb(
                    spec.path, spec.runtime, split.prepared, cfg.rss_sentences, cfg.threads, split.max_length
                )
            )
        lat = e["latency_ms"]
        print(
            f"  evaluate {spec.name}: {e['runtime']}, acc {fmt(e['accuracy'], '.4f')}, "
            f"batch-1 p50 {lat['batch1_p50']:.2f} ms (spread {lat['batch1_p50_spread']:.2f}), "
            f"batch-32 p50 {lat['batch32_p50']:.2f} ms (spread {lat['batch32_p50_spread']:.2f}), "
            f"{e['size_bytes'] / 1e6:.1f} MB, peak RSS {fmt(e['peak_rss_mb'], '.0f')} MB",
            flush=True,
        )
    for name, entry in entries.items():
        entry["agreement_with_teacher"] = agreement(predictions[name], predictions[TEACHER])
    return entries


def add_seed_spread(report: dict, entries: dict[str, dict], seed: int | None, seed_runs: list[dict]) -> None:
    """The `seeds` section and, in each comparison, the accuracy drop's mean and std over the seeds: when the
    seeds stage re-trained the chain and both accuracies were measured."""
    if not seed_runs or entries[FINAL]["accuracy"] is None or entries[TEACHER]["accuracy"] is None:
        return
    seeds = summarise_seeds(seed, entries[FINAL], entries[TEACHER], entries.get(BASELINE), list(seed_runs))
    report["seeds"] = seeds
    for section, key in (
        ("final_vs_teacher", "accuracy_drop_points"),
        (f"final_vs_{BASELINE}", "accuracy_drop_vs_baseline_points"),
    ):
        if section in report and key in seeds:
            report[section] |= {
                "accuracy_drop_points_seed_mean": seeds[key]["mean"],
                "accuracy_drop_points_seed_std": seeds[key]["std"],
            }
    print(
        f"  evaluate: accuracy drop over {seeds['accuracy_drop_points']['n']} seeds: mean "
        f"{seeds['accuracy_drop_points']['mean']:+.2f} points, std {seeds['accuracy_drop_points']['std']:.2f}",
        flush=True,
    )


def run(
    cfg: EvaluateConfig,
    gate_cfg: GateConfig,
    prepared: Path,
    models: list[ModelSpec],
    out_dir: Path,
    tracker: Tracker,
    max_length: int = 64,
    seed: int | None = None,
    seed_runs: list[dict] = (),
) -> StageResult:
    """`seed` is the training seed of the evaluated chain; `seed_runs` are the seeds stage's rows for the
    same chain re-trained with other seeds (seed, accuracy, agreement_with_teacher)."""
    prepared, out_dir = Path(prepared), Path(out_dir)
    models = ModelSpec.checked(models, (TEACHER, FINAL))
    card = json.loads((prepared / "data_card.json").read_text())
    test = EvalSplit.read(prepared, "test", card["labels"], max_length)
    tracker.log_params(
        {f"evaluate.{k}": v for k, v in cfg.model_dump().items()}
        | {"evaluate.models": ",".join(m.name for m in models), "evaluate.max_length": max_length}
    )

    # measure, compare, gate
    entries = measure_all(models, cfg, test)
    ratios = compare_to_teacher(entries[TEACHER], entries[FINAL])
    decision = decide(ratios, gate_cfg)
    report = build_report(card, entries, decision, environment_info(cfg.threads), timing_section(cfg))
    student = next((m for m in models if m.name == "student"), None)
    if student is not None and (ablation := distillation_ablation(student.path)):
        report["ablation"] = ablation
    pruned = next((m for m in models if m.name == "pruned"), None)
    final = next(m for m in models if m.name == FINAL)
    if pruned is not None and (budget := accuracy_budget(pruned.path, final.path)):
        report["accuracy_budget"] = budget
    report["final_vs_teacher"]["agreement_with_teacher"] = entries[FINAL]["agreement_with_teacher"]
    add_seed_spread(report, entries, seed, seed_runs)

    # write and log
    json_path, md_path = write_report(out_dir, report, render_markdown)
    plot_path = write_atomic(out_dir / REPORT_PLOT, lambda p: save_plot(report, p))
    for path in (json_path, md_path, plot_path):
        tracker.log_artifact(path)
    tracker.log_metrics(metrics_to_log(report))

    print(
        gate_summary(
            decision,
            f"{ratios['size_ratio']:.2f}x smaller, {ratios['speedup_batch1_p50']:.2f}x faster at batch 1, "
            f"{fmt(ratios['accuracy_drop_points'], '+.2f')} points accuracy drop",
        ),
        flush=True,
    )
    metrics = {**ratios, "gate_passed": float(decision.passed)}
    if f"final_vs_{BASELINE}" in report:
        metrics |= {f"vs_{BASELINE}.{k}": v for k, v in report[f"final_vs_{BASELINE}"].items()}
    return StageResult(
        metrics=metrics, outputs={"report": json_path, "markdown": md_path, "plot": plot_path}, info={"report": report}
    )
