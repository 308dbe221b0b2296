"""The incremental demonstration's report (flows/incremental_demo.py): a summary, a Markdown table and a plot.

`results["steps"]` holds, after the first run (step 0) and after each update, for each method (incremental,
naive, scratch): test accuracy on every batch seen so far (0..1), the final model's size (`size_bytes`, its
weight files; absent from results recorded before sizes were kept), wall seconds and training examples
(`reused`: the training stages a pipeline run took from an earlier run, whose time it did not spend). The
summary answers the demonstration's questions: how far the incremental model's mean accuracy is from the
from-scratch one after the last update, how much of the first batch it kept, what each method forgot, what
each update cost against training from scratch on all data so far, and how large each final model is (the
pipeline from scratch chooses its student's depth and pruning again on all the data, so its model may be
larger than the one the updates carry forward). `results["first_batch_paired"]` (where kept) compares each
method's last model with the first run on the first batch's test sentences one by one, so the report says how
many went right to wrong and back, and whether the change is more than chance moves on them.

A demonstration may run the from-scratch reference after the last update only (`--scratch-steps last`:
`step["scratch"]` is None before it). An update's cost is then set against the first full run instead,
a from-scratch run on less data than the update has seen, so the ratio it gives is an upper bound.
"""

from __future__ import annotations

import math
from pathlib import Path

from components.kit.forgetting import paired_text

METHODS = ("incremental", "naive", "scratch")
LABELS = {"incremental": "incremental (replay + KD)", "naive": "naive fine-tuning", "scratch": "from scratch"}


def mean(accuracy: dict[str, float | None]) -> float:
    values = [v for v in accuracy.values() if v is not None]
    return sum(values) / len(values) if values else math.nan


def forgetting(previous: dict[str, float | None], now: dict[str, float | None]) -> float:
    """The largest drop (points) on a batch measured before and after; 0.0 when none dropped."""
    drops = [100 * (previous[b] - now[b]) for b in previous if previous[b] is not None and now.get(b) is not None]
    return max([0.0, *drops])


def summarise(results: dict) -> dict:
    steps = results["steps"]
    first, last = steps[0], steps[-1]
    first_batch = first["learned"]
    per_update = []
    for before, step in zip(steps, steps[1:]):
        # without a from-scratch run on all data so far, the first full run (on less data) is the yardstick
        reference = step["scratch"] or first["incremental"]
        per_update.append(
            {
                "step": step["step"],
                "learned": step["learned"],
                **{f"{m}_mean": mean(step[m]["accuracy"]) for m in METHODS if step[m]},
                **{
                    f"{m}_forgetting_points": forgetting(before[m]["accuracy"], step[m]["accuracy"])
                    for m in ("incremental", "naive")
                },
                "cost_reference": "scratch" if step["scratch"] else "first_run",
                "seconds_ratio": step["incremental"]["seconds"] / reference["seconds"],
                "examples_ratio": step["incremental"]["examples"] / max(1.0, reference["examples"]),
            }
        )
    return {
        "final_mean": {m: mean(last[m]["accuracy"]) for m in METHODS},
        "final_vs_scratch_points": 100 * (mean(last["incremental"]["accuracy"]) - mean(last["scratch"]["accuracy"])),
        "first_batch": first_batch,
        "first_batch_first_champion": first["incremental"]["accuracy"][first_batch],
        "first_batch_final": {m: last[m]["accuracy"][first_batch] for m in METHODS},
        "first_batch_change_points": 100
        * (last["incremental"]["accuracy"][first_batch] - first["incremental"]["accuracy"][first_batch]),
        "updates": per_update,
        "max_seconds_ratio": max((u["seconds_ratio"] for u in per_update), default=math.nan),
        "max_examples_ratio": max((u["examples_ratio"] for u in per_update), default=math.nan),
        "final_size_bytes": {m: last[m].get("size_bytes") for m in METHODS},
        # absent from results recorded before the first batch was compared sentence by sentence
        "first_batch_paired": results.get("first_batch_paired") or {},
    }


def pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def megabytes(size_bytes: float | None) -> str:
    return "-" if size_bytes is None else f"{size_bytes / 1e6:.1f}"


# An update's registry alias as the forgetting gate left it (the first run and from-scratch runs have none).
GATE = {"champion": "passed", "challenger": "refused"}


def render_markdown(results: dict, summary: dict) -> str:
    batches = [step["learned"] for step in results["steps"]]
    lines = [
        "# Incremental learning: the vaderSentiment sources as a stream",
        "",
        "Test accuracy (%) on each batch after each step; `-`: not seen yet. Cost: wall seconds and training "
        "examples processed ((reused): a run that reused training stages of an earlier one, whose time is "
        "not in its seconds); MB: the final model's weight files; from scratch is the whole pipeline on every "
        "batch so far"
        + (
            f" (the last one: mean of seeds {', '.join(map(str, results['scratch_seeds']))})"
            if results["scratch_seeds"]
            else ""
        )
        + (
            f", with {', '.join(f'`{s}`' for s in results['scratch_settings'])}."
            if results.get("scratch_settings")
            else "."
        ),
        "",
        "| after | method | "
        + " | ".join(batches)
        + " | mean | forgetting (points) | gate | MB | seconds | examples |",
        "|---|---|" + "---:|" * (len(batches) + 2) + "---|" + "---:|" * 3,
    ]
    updates = {u["step"]: u for u in summary["updates"]}
    paired = summary.get("first_batch_paired") or {}
    for step in results["steps"]:
        methods = ("incremental",) if step["step"] == 0 else METHODS
        for m in (m for m in methods if step[m]):
            entry = step[m]
            update = updates.get(step["step"], {})
            lost = update.get(f"{m}_forgetting_points")
            cells = [pct(entry["accuracy"].get(b)) for b in batches]
            name = "first full run" if step["step"] == 0 else LABELS[m]
            seconds = f"{entry['seconds']:.0f}" + (" (reused)" if entry.get("reused") else "")
            lines.append(
                f"| {step['learned']} | {name} | " + " | ".join(cells) + f" | {pct(mean(entry['accuracy']))} | "
                f"{'-' if lost is None else f'{lost:.2f}'} | {GATE.get(entry.get('alias'), '-')} | "
                f"{megabytes(entry.get('size_bytes'))} | {seconds} | {entry['examples']:,.0f} |"
            )
    lines += [
        "",
        f"- after the last update, mean accuracy: incremental {pct(summary['final_mean']['incremental'])}, "
        f"naive {pct(summary['final_mean']['naive'])}, from scratch {pct(summary['final_mean']['scratch'])} "
        f"(incremental minus from scratch: {summary['final_vs_scratch_points']:+.2f} points)",
        f"- first batch ({summary['first_batch']}): first champion {pct(summary['first_batch_first_champion'])}, "
        f"after the last update {pct(summary['first_batch_final']['incremental'])} incremental "
        f"({summary['first_batch_change_points']:+.2f} points{'; ' if paired.get('incremental') else ''}"
        f"{paired_text(paired.get('incremental'))}), {pct(summary['first_batch_final']['naive'])} naive"
        + (f" ({paired_text(paired['naive'])})" if paired.get("naive") else ""),
    ]
    sizes = summary["final_size_bytes"]
    if sizes["incremental"] and sizes["scratch"]:
        lines.append(
            f"- final model size: incremental {megabytes(sizes['incremental'])} MB, from scratch "
            f"{megabytes(sizes['scratch'])} MB ({sizes['scratch'] / sizes['incremental']:.2f}x the incremental "
            "model's)"
        )
    yardstick = {
        "scratch": "the from-scratch run",
        "first_run": "the first full run (from scratch on less data: an upper bound)",
    }
    steps = {step["step"]: step for step in results["steps"]}
    for u in summary["updates"]:
        # why the gate refused an update (kept by the demonstration since it records the reason)
        refusals = [
            f"{m} refused ({steps[u['step']][m]['gate_reason']})"
            for m in ("incremental", "naive")
            if (steps[u["step"]].get(m) or {}).get("gate_reason")
        ]
        lines.append(
            f"- update {u['step']} ({u['learned']}): cost {u['seconds_ratio']:.2f}x the wall time and "
            f"{u['examples_ratio']:.2f}x the training examples of {yardstick[u['cost_reference']]}; forgetting "
            f"{u['incremental_forgetting_points']:.2f} points incremental, {u['naive_forgetting_points']:.2f} naive"
            + "".join(f"; {r}" for r in refusals)
        )
    return "\n".join(lines) + "\n"


def save_plot(results: dict, path: Path) -> None:
    """One panel per method: accuracy on each batch (a line per batch) after each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["steps"]
    batches = [s["learned"] for s in steps]
    fig, axes = plt.subplots(1, len(METHODS), figsize=(4.2 * len(METHODS), 3.6), sharey=True)
    for ax, method in zip(axes, METHODS):
        for batch in batches:
            seen = [s for s in steps if s[method] and s[method]["accuracy"].get(batch) is not None]
            xs = [s["step"] for s in seen]
            ys = [100 * s[method]["accuracy"][batch] for s in seen]
            ax.plot(xs, ys, marker="o", label=batch)
        ax.set_title(LABELS[method])
        ax.set_xticks([s["step"] for s in steps], [s["learned"] for s in steps], rotation=30)
        ax.set_xlabel("after learning")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(title="batch", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
