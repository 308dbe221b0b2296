"""Re-measure the models of a compression report side by side: batch-1 and batch-32 latency, repeated.

The report's figures come from one pass per model; this takes `repeats` rounds, each round timing every
model in turn (so drift in machine load spreads over all models alike), and gives the median with its
min-max per model, plus the final model's speed-ups over the teacher and the quantize-only baseline.
Run it with `make bench` (or `miniaturize bench`), after a pipeline run.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from components.kit import latency
from components.kit.latency import BATCH_SIZE
from components.kit.modeling import encode, read_split
from components.kit.report import ModelSpec


def spread(values: list[float]) -> dict:
    """Median and range of repeated measurements (ms)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def speedups(table: dict[str, dict], reference: str, target: str = "final") -> dict:
    """reference / target median latency per batch size, when both models were measured."""
    if reference not in table or target not in table:
        return {}
    return {key: table[reference][key]["median"] / table[target][key]["median"] for key in table[target]}


def measure_round(
    spec: ModelSpec,
    texts: list[str],
    labels: list[str],
    threads: int,
    warmup: int,
    calls_b1: int,
    calls_b32: int,
    max_length: int,
) -> dict[str, float]:
    from transformers import AutoTokenizer

    folder = spec.path if spec.path.is_dir() else spec.path.parent
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pad_id = tokenizer.pad_token_id or 0
    data = encode(tokenizer, texts, None, labels, max_length)
    runner = latency.load_runner(spec.path, spec.runtime, threads)
    b1 = latency.time_calls(runner, latency.batched_inputs(data.input_ids, pad_id, 1), warmup, calls_b1)
    b32 = latency.time_calls(runner, latency.batched_inputs(data.input_ids, pad_id, BATCH_SIZE), warmup, calls_b32)
    return {"batch1_p50": latency.latency_stats(b1)["p50"], "batch32_p50": latency.latency_stats(b32)["p50"]}


def run(
    models: list[ModelSpec],
    prepared: Path,
    repeats: int = 3,
    threads: int = 2,
    warmup: int = 20,
    calls_b1: int = 200,
    calls_b32: int = 50,
    max_length: int = 64,
) -> dict:
    texts = read_split(prepared, "test")["text"].tolist()
    rounds: dict[str, list[dict]] = {m.name: [] for m in models}
    for r in range(repeats):
        for spec in models:
            rounds[spec.name].append(measure_round(spec, texts, [], threads, warmup, calls_b1, calls_b32, max_length))
            print(
                f"  round {r + 1}/{repeats} {spec.name}: b1 p50 {rounds[spec.name][-1]['batch1_p50']:.2f} ms, "
                f"b32 p50 {rounds[spec.name][-1]['batch32_p50']:.1f} ms",
                flush=True,
            )
    table = {
        name: {key: spread([m[key] for m in measured]) for key in ("batch1_p50", "batch32_p50")}
        for name, measured in rounds.items()
    }
    return {
        "repeats": repeats,
        "threads": threads,
        "models": table,
        "final_speedup_vs_teacher": speedups(table, "teacher"),
        "final_speedup_vs_baseline_teacher_int8": speedups(table, "baseline_teacher_int8"),
    }


def render(result: dict) -> str:
    lines = [
        f"| model | batch-1 p50 ms, median [min-max] of {result['repeats']} | batch-32 p50 ms |",
        "|---|---:|---:|",
    ]
    for name, row in result["models"].items():
        cells = [
            f"{row[k]['median']:.2f} [{row[k]['min']:.2f}-{row[k]['max']:.2f}]" for k in ("batch1_p50", "batch32_p50")
        ]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    for ref in ("teacher", "baseline_teacher_int8"):
        ups = result[f"final_speedup_vs_{ref}"]
        if ups:
            lines.append(
                f"\nfinal vs {ref}: batch-1 {ups['batch1_p50']:.2f}x, batch-32 {ups['batch32_p50']:.2f}x faster"
            )
    return "\n".join(lines)
