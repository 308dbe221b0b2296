"""Peak-memory probe: load one model, predict n test sentences, print the process's peak RSS as JSON.

    python -m components.rss_probe --model DIR --runtime torch|onnx --prepared DIR --n 100 --threads 2

prints one line: {"peak_rss_mb": 812.4, "n": 100, "runtime": "torch", "model": "DIR"}.

`benchmark.peak_rss_mb` runs it in a fresh process per model, so a figure holds that model alone. The
probe imports only what serving the model needs: tokenisation uses the `tokenizers` library on the
folder's tokenizer.json (transformers would import torch), and an ONNX model is run with onnxruntime
only, never torch. The test split is read by a short-lived child process, so pyarrow's ~80 MB of
libraries do not count either. Peak RSS is VmHWM from /proc/self/status on Linux (see `peak_rss_mb` for why
not ru_maxrss), `getrusage(RUSAGE_SELF).ru_maxrss` elsewhere.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from components.benchmark import load_runner, pad_batch, runtime_kind

BATCH_SIZE = 32
# Run in a child process: reading Parquet needs pyarrow, which is no part of serving a model.
READ_TEXTS = ("import json, sys, pyarrow.parquet as pq; "
              "texts = pq.read_table(sys.argv[1], columns=['text']).column('text').to_pylist(); "
              "print(json.dumps(texts[:int(sys.argv[2])]))")


def read_test_texts(prepared: Path, n: int) -> list[str]:
    done = subprocess.run([sys.executable, "-c", READ_TEXTS, str(prepared / "test.parquet"), str(n)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _token_id(tokenizer_dir: Path, tokenizer, key: str, default: int) -> int:
    """Id of a special token named in tokenizer_config.json / special_tokens_map.json."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = tokenizer_dir / name
        if file.is_file():
            token = json.loads(file.read_text()).get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
                return tokenizer.token_to_id(token)
    return default


def tokenize(tokenizer_dir: Path, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids (with special tokens, truncated) and the pad id."""
    if (tokenizer_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        return [e.ids for e in tokenizer.encode_batch(texts)], _token_id(tokenizer_dir, tokenizer, "pad_token", 0)
    from transformers import AutoTokenizer  # a slow-only tokenizer: costs torch's memory, but still works

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return ids, tokenizer.pad_token_id or 0


def peak_rss_mb(status: Path = Path("/proc/self/status")) -> float:
    """This process's peak resident set size, in MB.

    On Linux, VmHWM (the high-water mark of this process image) rather than ru_maxrss: the kernel carries
    ru_maxrss across exec, so a probe started by a parent holding torch and a few models would report
    at least the parent's RSS at fork time (measured: 743 MB instead of 80 MB for a small ONNX model).
    """
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="model folder (or .onnx file)")
    parser.add_argument("--runtime", required=True, choices=["torch", "onnx"])
    parser.add_argument("--prepared", required=True, type=Path, help="folder holding test.parquet")
    parser.add_argument("--n", type=int, default=100, help="test sentences to predict")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args(argv)

    runner = load_runner(args.model, runtime_kind(args.runtime), args.threads)  # fails fast on a bad path
    texts = read_test_texts(args.prepared, args.n)
    tokenizer_dir = args.model if args.model.is_dir() else args.model.parent
    ids, pad_id = tokenize(tokenizer_dir, texts, args.max_length)
    for start in range(0, len(ids), BATCH_SIZE):
        runner(pad_batch(ids[start:start + BATCH_SIZE], pad_id))
    result = {"peak_rss_mb": peak_rss_mb(), "n": len(ids), "runtime": args.runtime, "model": str(args.model)}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
