"""The model card of a registered version: what it is for, the data it learned, how it was compressed, how it
measured against its teacher, what the gate decided and what it cannot do. Pure: text in, text out.

`markdown(report, about)` builds the card from a compression report (`reports/<task>/compression_report.json`,
or an update's or search's report: every section the report lacks is left out) and `About`, what the params and
the registry know besides (name, data and its sha256, each compression step's settings, the quality figure the
gate judges). `hugging_face(report, about)` is the same card with the Hugging Face model-card front matter
(YAML: pipeline tag and a `model-index` of the final model's figures), the edge bundle's README.md.

It runs in the register stage (`flows/registry.py`), which sets the card as the version's description and
logs it as the run's `MODEL_CARD.md`: read it in the MLflow UI (`make ui`), on the registered version's page.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import yaml

from components.kit.report import environment_line, fmt, gate_lines

# Hugging Face's pipeline tag for the report's `task`; a task not named here is tagged "other".
HF_TASKS = {
    "sequence-classification": "text-classification",
    "multitask-classification": "text-classification",
    "causal-lm": "text-generation",
}
# The rows of the figures table: the report's model entries, as the card names them.
ROWS = {"teacher": "teacher", "final": "final (this model)", "baseline_teacher_int8": "teacher quantized alone"}
STEPS = {
    "finetune": "teacher (finetune)",
    "distill": "distillation",
    "prune": "pruning",
    "trim": "vocabulary trimming",
    "export": "ONNX export",
    "quantize": "int8 quantization",
}


@dataclass(frozen=True)
class Figure:
    """A column of the figures table: where a model entry holds it (dotted), its heading, how it is shown, and
    its Hugging Face metric type when it is a quality figure (model-index)."""

    key: str
    heading: str
    spec: str
    scale: float = 1.0
    hf_type: str | None = None


# Each shown when any row has it, the gate's quality figure first.
FIGURES = (
    Figure("accuracy", "accuracy", ".4f", hf_type="accuracy"),
    Figure("f1_macro", "macro F1", ".4f", hf_type="f1"),
    Figure("perplexity", "perplexity", ".2f", hf_type="perplexity"),
    Figure("bleu", "BLEU", ".2f", hf_type="bleu"),
    Figure("size_bytes", "size (MB)", ".1f", scale=1e-6),
    Figure("latency_ms.batch1_p50", "batch-1 p50 (ms)", ".2f"),
    Figure("tokens_per_s", "tokens/s", ".0f"),
)


@dataclass(frozen=True)
class About:
    """What the card tells besides the report."""

    name: str  # the registered model's name
    version: str | None  # its version, once registered
    data_source: str  # the data as the params name it (vader-movie, data/topics.csv)
    data_sha256: str  # the sha256 the data stage recorded (the version's `data_sha256` tag)
    quality: str  # the figure the gate judges quality by (accuracy, perplexity)
    # {stage: its settings}, in run order: the teacher (finetune), distill, prune, trim, quantize
    chain: dict[str, dict] = field(default_factory=dict)
    labels: list[str] | None = None  # a classifier's labels, when it has one set


# ---------------------------------------------------------------- the card


def markdown(report: dict, about: About) -> str:
    """The card as Markdown (see the module docstring)."""
    title = about.name + (f", version {about.version}" if about.version else "")
    lines = [f"# {title}", "", *summary_lines(report, about)]
    lines += intended_use_lines(report, about)
    lines += data_lines(report, about)
    lines += chain_lines(about)
    lines += figure_lines(report, about)
    if report.get("gate"):
        lines += gate_lines(report["gate"])
    lines += limit_lines(report, about)
    return "\n".join(lines) + "\n"


def hugging_face(report: dict, about: About) -> str:
    """The card with Hugging Face front matter: `pipeline_tag`, tags and a `model-index` of the final model's
    quality figures on the test split (task type, dataset name and type, each metric's type and value)."""
    front = {
        "library_name": "onnx",
        "pipeline_tag": HF_TASKS.get(report.get("task", ""), "other"),
        "tags": ["miniaturize", "onnx", "int8", "distillation", "pruning", "quantization"],
        "model-index": [{"name": about.name, "results": [hf_result(report, about)]}],
    }
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + markdown(report, about)


def hf_result(report: dict, about: About) -> dict:
    """One model-index result: the task, the dataset and the final model's quality figures (a multitask model's
    each task's accuracy too)."""
    final = report.get("models", {}).get("final") or {}
    split = report.get("split", "test")
    metrics = [
        {"type": f.hf_type, "value": round(float(value), 6), "name": f"{split} {f.heading}"}
        for f in ordered(about.quality)
        if f.hf_type and (value := figure(final, f.key)) is not None
    ]
    metrics += [
        {"type": "accuracy", "value": round(float(scores["accuracy"]), 6), "name": f"{split} accuracy ({task})"}
        for task, scores in final.get("tasks", {}).items()
        if number(scores.get("accuracy")) is not None
    ]
    dataset = report.get("dataset", {})
    return {
        "task": {"type": HF_TASKS.get(report.get("task", ""), "other")},
        "dataset": {"name": dataset.get("source") or about.data_source, "type": about.data_source},
        "metrics": metrics,
    }


# ---------------------------------------------------------------- its sections


def summary_lines(report: dict, about: About) -> list[str]:
    steps = [STEPS.get(name, name) for name in about.chain if name != "finetune"]
    made = f" through {', '.join(steps)}" if steps else ""
    lines = [
        f"A compressed model for `{report.get('task', 'an unnamed task')}`, made by miniaturize from its teacher{made}."
    ]
    if report.get("parent_version"):  # an update's report
        lines += [
            "",
            f"It is an incremental update of version {report['parent_version']} ({report.get('method', 'update')}), "
            f"which learned the batch `{report.get('batch', '?')}`; the chain below made the model it started from.",
        ]
    return lines


def intended_use_lines(report: dict, about: About) -> list[str]:
    lines = [
        "",
        "## Intended use",
        "",
        "CPU inference with ONNX Runtime: the edge bundle's `predict.py` (the version's `edge_bundle/` artifact), "
        "or `mlflow.pyfunc.load_model` on this version (its signature and input example are in its MLmodel).",
        f"It is meant for text like its data (`{about.data_source}`) and for what that data labels:",
    ]
    tasks = report.get("tasks")  # a multitask report: {task: its labels}
    if tasks:
        lines += [f"- {task}: {', '.join(map(str, labels))}" for task, labels in tasks.items()]
    elif about.labels:
        lines.append(f"- labels: {', '.join(about.labels)}")
    else:
        lines.append("- the continuation of a text, as its data reads (no labels)")
    return lines


def data_lines(report: dict, about: About) -> list[str]:
    dataset = report.get("dataset", {})
    rows = dataset.get("rows") or {}
    lines = [
        "",
        "## Data",
        "",
        f"- source: `{dataset.get('source') or about.data_source}` (data source `{about.data_source}`)",
        f"- sha256: `{about.data_sha256 or dataset.get('sha256') or 'unknown'}`",
    ]
    if rows:
        lines.append("- rows: " + ", ".join(f"{split} {int(n):,}" for split, n in rows.items()))
    return lines


def chain_lines(about: About) -> list[str]:
    if not about.chain:
        return []
    lines = ["", "## Compression chain", "", "| step | settings |", "|---|---|"]
    for name, settings in about.chain.items():
        lines.append(f"| {STEPS.get(name, name)} | {settings_text(settings) or 'defaults'} |")
    return lines


def settings_text(settings: dict, prefix: str = "") -> str:
    """`key=value` pairs of a settings tree (nested keys dotted), as one table cell."""
    parts = []
    for key, value in settings.items():
        if isinstance(value, dict):
            parts.append(settings_text(value, f"{prefix}{key}."))
        else:
            shown = value if isinstance(value, str) else json.dumps(value)
            parts.append(f"{prefix}{key}={shown}")
    return ", ".join(p for p in parts if p).replace("|", "\\|")


def figure_lines(report: dict, about: About) -> list[str]:
    models = report.get("models") or {}
    rows = {name: models[name] for name in ROWS if models.get(name)}
    if not rows:
        return []
    columns = [f for f in ordered(about.quality) if any(figure(e, f.key) is not None for e in rows.values())]
    split = report.get("split", "test")
    lines = [
        "",
        f"## Figures ({split} split)",
        "",
        "| model | " + " | ".join(f.heading for f in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, entry in rows.items():
        cells = [fmt(scaled(figure(entry, f.key), f.scale), f.spec) for f in columns]
        lines.append(f"| {ROWS[name]} | " + " | ".join(cells) + " |")
    tasks = list((rows.get("final") or {}).get("tasks") or {})
    if tasks:  # a multitask model: each task's accuracy
        lines += ["", "| task | " + " | ".join(ROWS[n] for n in rows) + " |", "|---|" + "---:|" * len(rows)]
        for task in tasks:
            cells = [fmt(number((e.get("tasks") or {}).get(task, {}).get("accuracy")), ".4f") for e in rows.values()]
            lines.append(f"| {task} accuracy | " + " | ".join(cells) + " |")
    if report.get("environment"):
        lines += ["", f"Measured {environment_line(report['environment'])}"]
    return lines


def limit_lines(report: dict, about: About) -> list[str]:
    lines = [
        "",
        "## Known limits",
        "",
        f"- Its figures come from the {report.get('split', 'test')} split of this data alone: text of another "
        "domain, style or language may score lower, and has not been measured.",
    ]
    length = (about.chain.get("finetune") or {}).get("max_length")
    if length:
        lines.append(f"- Texts are cut to {length} tokens: anything after that is not read.")
    agreement = number((report.get("final_vs_teacher") or {}).get("agreement_with_teacher"))
    if agreement is not None:
        lines.append(f"- It answers as its teacher does on {100 * agreement:.1f}% of the test sentences, not on all.")
    steps = [STEPS.get(name, name) for name in about.chain if name not in ("finetune", "export")]
    if steps:
        lines.append(
            f"- {', '.join(steps).capitalize()} trade quality for size and speed: on rare inputs it can answer "
            "otherwise than its teacher."
        )
    if "trim" in about.chain:
        lines.append("- A word outside the trimmed vocabulary is read as unknown pieces.")
    lines.append("- Latency and memory were measured on one machine; another machine's figures differ.")
    if report.get("gate") and not report["gate"].get("passed"):
        lines.append("- The gate refused it (above): it is not meant to serve as the champion.")
    return lines


# ---------------------------------------------------------------- small helpers


def ordered(quality: str) -> list[Figure]:
    """The figures, the gate's quality figure first."""
    return sorted(FIGURES, key=lambda f: f.key != quality)


def figure(entry: dict, key: str):
    """A model entry's figure by dotted key (latency_ms.batch1_p50), None when absent or not a finite number."""
    value = entry
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return number(value)


def number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale
