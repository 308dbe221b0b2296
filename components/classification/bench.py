"""Re-measure the models of a compression report side by side: batch-1 and batch-32 latency, repeated.

The evaluate stage already times its models in alternating rounds; this re-times them with more calls, after
a pipeline run: every model is loaded once and warmed up, then the models take turns in `repeats` rounds, each
round in a rotated order and with `calls_b1` / `calls_b32` timed calls per model (the kit's
`latency.time_rounds`, as the evaluate stage times). It gives the median of the round p50s with their min-max
per model, plus the final model's speed-ups over the teacher and the quantize-only baseline.
Run it with `make bench` (or `miniaturize bench`), after a pipeline run.
"""

from __future__ import annotations

from pathlib import Path

from components.kit import latency
from components.kit.latency import BATCH_SIZE
from components.kit.modeling import encode, read_split
from components.kit.report import ModelSpec, environment_info, environment_line


def spread(stats: dict) -> dict:
    """Median and range of the round p50s of one model's `latency.round_stats` (ms)."""
    p50s = stats["round_p50"]
    return {"median": stats["p50"], "min": min(p50s), "max": max(p50s), "n": len(p50s)}


def speedups(table: dict[str, dict], reference: str, target: str = "final") -> dict:
    """reference / target median latency per batch size, when both models were measured."""
    if reference not in table or target not in table:
        return {}
    return {key: table[reference][key]["median"] / table[target][key]["median"] for key in table[target]}


def load(spec: ModelSpec, texts: list[str], threads: int, max_length: int) -> tuple[latency.Runner, dict[int, list]]:
    """The model's runner and the test sentences as its batches of 1 and of `BATCH_SIZE`."""
    from transformers import AutoTokenizer

    folder = spec.path if spec.path.is_dir() else spec.path.parent
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pad_id = tokenizer.pad_token_id or 0
    data = encode(tokenizer, texts, None, [], max_length)
    runner = latency.load_runner(spec.path, spec.runtime, threads)
    return runner, {size: latency.batched_inputs(data.input_ids, pad_id, size) for size in (1, BATCH_SIZE)}


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
    loaded = {spec.name: load(spec, texts, threads, max_length) for spec in models}

    def report(name: str, r: int, samples: list[float]) -> None:
        print(f"  round {r + 1}/{repeats} {name}: p50 {latency.latency_stats(samples)['p50']:.2f} ms", flush=True)

    table: dict[str, dict] = {name: {} for name in loaded}
    for key, size, calls in (("batch1_p50", 1, calls_b1), ("batch32_p50", BATCH_SIZE, calls_b32)):
        print(f"  {key}:", flush=True)
        rounds = latency.time_rounds(
            {name: runner for name, (runner, _) in loaded.items()},
            {name: batches[size] for name, (_, batches) in loaded.items()},
            warmup,
            calls * repeats,  # `calls` in each round: a bench times more than the evaluate stage
            repeats,
            report,
        )
        for name, samples in rounds.items():
            table[name][key] = spread(latency.round_stats(samples))
    return {
        "repeats": repeats,
        "threads": threads,
        "environment": environment_info(threads),
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
    if env := result.get("environment"):
        lines.append(f"\nMeasured {environment_line(env)}")
    return "\n".join(lines)
