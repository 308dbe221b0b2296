"""Accuracy-aware compression search: candidates over kept layers, prune ratio, vocabulary and quantization.

`candidates(cfg)` spells out the space of `SearchConfig` (at most `max_candidates`, students grouped so
that each distilled student and each pruned model is trained once and shared by the candidates built on
it). `flows.search.build(candidate, ...)` runs the real chain for one candidate: distill, prune, trim,
export and quantize, each the pipeline's own stage module at the search's training budget (`search.epochs`),
reusing the intermediate models an earlier candidate already built. `measure(...)` scores a model on the
validation split (the selection split: accuracy and batch-1 p50 latency) and the test split (reported
only, and the figure a registered choice carries for the champion check), and its size; an empty split's
accuracy is None, never 0.

The decision is pure: `pareto_front` keeps the candidates no other candidate beats on validation
accuracy, latency and size at once; `choose` picks, among the candidates within
`max_drop_vs_teacher_points` of the teacher's validation accuracy, the fastest (then the smallest). When
none is within tolerance it still returns the most accurate candidate, flagged, with the constraint that
failed: a search never ends with nothing. `save_plot` draws every candidate, the front and the choice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.config import SearchConfig


@dataclass(frozen=True)
class Candidate:
    layers: tuple[int, ...]
    prune_ratio: float  # share of heads and of FFN neurons removed; 0 skips pruning
    trim: bool
    quantize: str  # a quantize candidate method, or "fp32"

    @property
    def student_key(self) -> str:
        return "L" + "-".join(map(str, self.layers))

    @property
    def pruned_key(self) -> str:
        return f"{self.student_key}_p{round(self.prune_ratio * 100):02d}"

    @property
    def export_key(self) -> str:
        return f"{self.pruned_key}_{'trim' if self.trim else 'full'}"

    @property
    def name(self) -> str:
        return f"{self.export_key}_{self.quantize}"

    def as_params(self) -> dict:
        return {
            "layers": list(self.layers),
            "prune_ratio": self.prune_ratio,
            "trim": self.trim,
            "quantize": self.quantize,
        }


def candidates(cfg: SearchConfig) -> list[Candidate]:
    """The space in build order (student, then prune ratio, then vocabulary, then quantization), capped
    at `cfg.max_candidates`."""
    space = [
        Candidate(tuple(layers), float(ratio), bool(trim), mode)
        for layers in cfg.layers
        for ratio in cfg.prune_ratios
        for trim in cfg.trim
        for mode in cfg.quantize
    ]
    return space[: cfg.max_candidates]


# ---------------------------------------------------------------- pure decisions


def dominates(a: dict, b: dict) -> bool:
    """a is at least as good as b on accuracy, latency and size, and better on one of them."""
    at_least = (
        a["val_accuracy"] >= b["val_accuracy"]
        and a["latency_ms"] <= b["latency_ms"]
        and a["size_bytes"] <= b["size_bytes"]
    )
    better = (
        a["val_accuracy"] > b["val_accuracy"] or a["latency_ms"] < b["latency_ms"] or a["size_bytes"] < b["size_bytes"]
    )
    return at_least and better


def pareto_front(rows: list[dict]) -> list[str]:
    """Names of the measured candidates that no other candidate dominates, fastest first."""
    ok = [r for r in rows if "error" not in r]
    front = [r for r in ok if not any(dominates(o, r) for o in ok if o is not r)]
    return [r["name"] for r in sorted(front, key=lambda r: (r["latency_ms"], r["size_bytes"]))]


@dataclass(frozen=True)
class Choice:
    name: str | None
    within_tolerance: bool
    reason: str


def choose(rows: list[dict], teacher_val_accuracy: float, max_drop_points: float) -> Choice:
    """The fastest (then smallest) candidate within `max_drop_points` of the teacher's validation accuracy;
    failing that, the most accurate candidate, with the constraint it failed."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return Choice(None, False, "no candidate could be built")
    for r in ok:
        r["accuracy_drop_points"] = 100.0 * (teacher_val_accuracy - r["val_accuracy"])
    within = [r for r in ok if r["accuracy_drop_points"] <= max_drop_points + 1e-9]
    if within:
        best = min(within, key=lambda r: (r["latency_ms"], r["size_bytes"]))
        return Choice(
            best["name"],
            True,
            f"fastest of {len(within)} candidate(s) within {max_drop_points} accuracy points of the teacher",
        )
    best = max(ok, key=lambda r: (r["val_accuracy"], -r["latency_ms"]))
    return Choice(
        best["name"],
        False,
        f"accuracy constraint failed: no candidate within {max_drop_points} points "
        f"of the teacher; the most accurate loses {best['accuracy_drop_points']:.2f}",
    )


def save_plot(rows: list[dict], front: list[str], chosen: str | None, teacher: dict, path: Path) -> None:
    """Validation accuracy against batch-1 latency and against size: all candidates, the front, the choice."""
    from matplotlib.figure import Figure

    ok = [r for r in rows if "error" not in r]
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    for ax, key, scale, label in zip(
        fig.subplots(1, 2), ("latency_ms", "size_bytes"), (1.0, 1e-6), ("batch-1 p50 latency (ms)", "size (MB)")
    ):
        ax.scatter([r[key] * scale for r in ok], [100 * r["val_accuracy"] for r in ok], color="0.6", label="candidate")
        on_front = sorted((r for r in ok if r["name"] in front), key=lambda r: r[key])
        ax.plot(
            [r[key] * scale for r in on_front],
            [100 * r["val_accuracy"] for r in on_front],
            "o-",
            color="C0",
            label="Pareto front",
        )
        for r in ok:
            if r["name"] == chosen:
                ax.scatter(
                    [r[key] * scale],
                    [100 * r["val_accuracy"]],
                    s=160,
                    facecolors="none",
                    edgecolors="C3",
                    linewidths=2,
                    label=f"chosen: {chosen}",
                )
        ax.axhline(100 * teacher["val_accuracy"], color="C2", linestyle="--", label="teacher")
        ax.set(xlabel=label, ylabel="validation accuracy (%)")
        ax.grid(True, alpha=0.3)
    fig.axes[0].legend(fontsize=7, loc="lower right")
    fig.savefig(path, format="png", dpi=120)


def shown(accuracy: float | None) -> str:
    """An accuracy to 4 places, or n/a when it was not measured."""
    return "n/a" if accuracy is None else f"{accuracy:.4f}"


def render_markdown(result: dict) -> str:
    lines = [
        "# Compression search",
        "",
        f"Teacher: validation accuracy {result['teacher']['val_accuracy']:.4f}, batch-1 p50 "
        f"{result['teacher']['latency_ms']:.2f} ms, {result['teacher']['size_bytes'] / 1e6:.1f} MB. "
        f"Tolerance: {result['max_drop_vs_teacher_points']} points of validation accuracy.",
        "",
        f"**Chosen:** {result['chosen'] or 'none'} ({result['reason']}).",
        "",
        "| candidate | val acc | test acc | drop (points) | batch-1 p50 (ms) | size (MB) | speed-up | smaller | front |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["candidates"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {shown(r['val_accuracy'])} | {shown(r['test_accuracy'])} "
            f"| {r['accuracy_drop_points']:+.2f} | {r['latency_ms']:.2f} | {r['size_bytes'] / 1e6:.1f} "
            f"| {r['speedup_batch1']:.1f}x | {r['size_ratio']:.1f}x | {'yes' if r['name'] in result['front'] else ''} |"
        )
    if result["skipped"]:
        lines += ["", f"Not built (budget of {result['budget_minutes']} min spent): " + ", ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- building and measuring


def measure(path: Path, runtime: str, prepared: Path, threads: int, calls: int, max_length: int) -> dict:
    """Validation and test accuracy, batch-1 p50 latency on validation sentences, and size of one model."""
    from transformers import AutoTokenizer

    from components.kit import latency
    from components.kit.modeling import dir_size_bytes, encode, read_split

    folder = path if path.is_dir() else path.parent
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    labels = json.loads((folder / "labels.json").read_text())
    runner = latency.load_runner(path, runtime, threads)
    out = {}
    for split, key in (("validation", "val_accuracy"), ("test", "test_accuracy")):
        frame = read_split(prepared, split)
        out[key] = None  # no rows: not measurable
        if frame.empty:
            continue
        data = encode(tokenizer, frame["text"].tolist(), frame["label"].tolist(), labels, max_length)
        predicted = latency.runner_logits(runner, data.input_ids, pad_id).argmax(-1)
        out[key] = float((predicted == data.labels).mean())
        if split == "validation":
            times = latency.time_calls(
                runner, latency.batched_inputs(data.input_ids, pad_id, 1)[:calls], warmup=min(20, calls), calls=calls
            )
            out["latency_ms"] = latency.latency_stats(times)["p50"]
    kind = latency.runtime_kind(runtime)
    out["size_bytes"] = int(dir_size_bytes(path) if kind == "torch" else latency.onnx_size_bytes(path))
    return out


def summary(rows: list[dict], teacher: dict, choice: Choice, cfg: SearchConfig, skipped: list[str]) -> dict:
    for r in rows:
        if "error" not in r:
            r["speedup_batch1"] = teacher["latency_ms"] / r["latency_ms"] if r["latency_ms"] else math.inf
            r["size_ratio"] = teacher["size_bytes"] / r["size_bytes"]
    return {
        "teacher": teacher,
        "max_drop_vs_teacher_points": cfg.max_drop_vs_teacher_points,
        "budget_minutes": cfg.budget_minutes,
        "candidates": rows,
        "front": pareto_front(rows),
        "chosen": choice.name,
        "within_tolerance": choice.within_tolerance,
        "reason": choice.reason,
        "skipped": skipped,
        "space": cfg.model_dump(),
    }


def json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
