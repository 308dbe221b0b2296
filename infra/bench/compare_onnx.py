"""Compare ONNX classifiers side by side on one prepared test split: test accuracy, size, and batch-1 and
batch-32 latency timed like the evaluate stage times (every model loaded first, then alternating rounds in a
rotated order, `components.kit.latency.time_rounds`; a figure is the median over rounds). Used to set the
compression search's choice against the pipeline's final model (docs/measured.md).

    .venv/bin/python infra/bench/compare_onnx.py --prepared data/prepared \\
        final=models/final search=models/search/candidates/L0-2-4_p40_trim_fused_int8

Each folder holds model.onnx, its tokenizer and labels.json (what the pipeline and the search write).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: `components` from this tree

from components.kit import latency  # noqa: E402
from components.kit.modeling import encode, read_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="NAME=FOLDER, two or more")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"), help="folder with test.parquet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    models = dict(spec.partition("=")[::2] for spec in args.models)
    for name, folder in models.items():
        if not name or not (Path(folder) / "labels.json").is_file():
            parser.error(f"{name}={folder}: give NAME=FOLDER, a folder with model.onnx, its tokenizer and labels.json")
    if not (args.prepared / "test.parquet").is_file():
        parser.error(f"no test.parquet in {args.prepared}")
    from transformers import AutoTokenizer

    test = read_split(args.prepared, "test")
    runners, inputs, rows = {}, {1: {}, 32: {}}, {}
    for name, folder in models.items():
        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        labels = json.loads((folder / "labels.json").read_text())
        data = encode(tokenizer, test["text"].tolist(), test["label"].tolist(), labels, args.max_length)
        runners[name] = latency.load_runner(folder, "onnxruntime", args.threads)
        predicted = latency.runner_logits(runners[name], data.input_ids, tokenizer.pad_token_id).argmax(-1)
        for size in inputs:
            inputs[size][name] = latency.batched_inputs(data.input_ids, tokenizer.pad_token_id, size)
        rows[name] = {
            "test_accuracy": float((predicted == data.labels).mean()),
            "size_mb": latency.onnx_size_bytes(folder) / 1e6,
        }
    for size, calls in ((1, 400), (32, 200)):
        rounds = latency.time_rounds(runners, inputs[size], 20, calls, args.rounds)
        for name, samples in rounds.items():
            stats = latency.round_stats(samples)
            rows[name] |= {f"batch{size}_p50_ms": stats["p50"], f"batch{size}_spread_ms": stats["p50_spread"]}
    print("| model | test accuracy | size (MB) | batch-1 p50 ms (spread) | batch-32 p50 ms (spread) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['test_accuracy']:.4f} | {r['size_mb']:.2f} | {r['batch1_p50_ms']:.3f} "
            f"({r['batch1_spread_ms']:.3f}) | {r['batch32_p50_ms']:.2f} ({r['batch32_spread_ms']:.2f}) |"
        )


if __name__ == "__main__":
    main()
