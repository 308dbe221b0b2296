"""Time an edge bundle from process start to its first prediction, beside the floor no bundle can beat: a bare
`python -c "import numpy, tokenizers, onnxruntime"` in the same interpreter. Each run is a fresh process,
the two alternate (so a change in the machine's load falls on both alike), and each process's peak
resident memory is read from its own rusage. Prints the median and min-max of both and the difference.

    miniaturize package --out edge/                     # the champion's bundle
    .venv/bin/python infra/bench/edge_start.py edge/ --runs 5 [--text "a wonderful film"]

The bundle runs with the interpreter given by --python (default: this one); it imports only numpy,
tokenizers and onnxruntime whatever else that environment holds. docs/measured.md gives what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The child's peak RSS (kB on Linux) read in a wrapper process, so it is that child's alone.
WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode)"
)


def measure(command: list[str]) -> tuple[float, float]:
    """(seconds from process start to exit, peak RSS in MB) of one fresh process running `command`."""
    out = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, check=True)
    seconds, rss_mb, code = out.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    return float(seconds), float(rss_mb)


def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--text", default="a wonderful, moving film")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    commands = {
        "bare import": [args.python, "-c", "import numpy, tokenizers, onnxruntime"],
        "bundle": [args.python, str(args.bundle / "predict.py"), args.text],
    }
    for command in commands.values():  # warm the page cache once: the figures are of a warm start
        measure(command)
    runs: dict[str, dict[str, list[float]]] = {name: {"seconds": [], "rss_mb": []} for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            seconds, rss = measure(command)
            runs[name]["seconds"].append(seconds)
            runs[name]["rss_mb"].append(rss)
    result = {name: {k: summary(v) for k, v in r.items()} for name, r in runs.items()}
    result["bundle_minus_import_s"] = result["bundle"]["seconds"]["median"] - result["bare import"]["seconds"]["median"]
    result["runs"] = args.runs
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"measured in {time.perf_counter() - started:.1f} s", file=sys.stderr)
