"""Peak-memory probe: load one model, predict n test sentences, print the process's peak RSS as JSON.

    python -m components.kit.rss_probe --model DIR --runtime torch|onnx --prepared DIR --n 100 --threads 2

prints one line: {"peak_rss_mb": 812.4, "n": 100, "runtime": "torch", "model": "DIR"}.

With `--work generate` the model is a decoder (GPT-2 style): each of the n test sentences gives a prompt
(its first `--prefix-tokens` tokens) and the model generates exactly `--new-tokens` tokens greedily at
batch 1 with its KV cache. A PyTorch model generates with transformers' `generate`
(`generation.greedy_generate`); an ONNX decoder (Optimum's merged export with past key values) runs
`session_greedy`, a numpy loop over the InferenceSession, so the probe imports onnxruntime and tokenizers
only, never torch.

`latency.peak_rss_mb` (and a decoder's evaluate stage, with `--work generate`) runs it in a fresh process
per model, so a figure holds that model alone. The probe imports only what serving the model needs: tokenisation uses the
`tokenizers` library on the folder's tokenizer.json (transformers would import torch), and an ONNX model is
run with onnxruntime only, never torch. The test split is read by a short-lived child process, so pyarrow's ~80 MB of
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

import numpy as np

from components.kit.latency import load_onnx_session, load_runner, pad_batch, runtime_kind

BATCH_SIZE = 32
# Run in a child process: reading Parquet needs pyarrow, which is no part of serving a model.
READ_TEXTS = (
    "import json, sys, pyarrow.parquet as pq; "
    "texts = pq.read_table(sys.argv[1], columns=['text']).column('text').to_pylist(); "
    "print(json.dumps(texts[:int(sys.argv[2])]))"
)


def read_test_texts(prepared: Path, n: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", READ_TEXTS, str(prepared / "test.parquet"), str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
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


def session_greedy(
    session, prompt_ids: list[int], max_new_tokens: int, eos_id: int | None, min_new_tokens: int = 0
) -> list[int]:
    """Greedy continuation of one prompt by an ONNX decoder with past key values, at batch 1.

    The first call feeds the prompt with an empty cache, each later call only the newest token and the
    cache the previous call returned. Generation stops after `max_new_tokens` tokens or at `eos_id` (not
    returned), which cannot be chosen before `min_new_tokens` tokens exist.
    """
    if not prompt_ids:
        raise ValueError("session_greedy needs a non-empty prompt")
    inputs = {i.name: i for i in session.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    present_names = [n.replace("past_key_values.", "present.", 1) for n in past_names]
    past_dtype = np.float16 if past_names and "float16" in inputs[past_names[0]].type else np.float32
    # (batch, heads, past_length, head_dim); the two fixed sizes are static in Optimum's export
    past = [np.zeros((1, inputs[n].shape[1], 0, inputs[n].shape[3]), dtype=past_dtype) for n in past_names]
    ids = np.asarray([prompt_ids], dtype=np.int64)
    seen, out = 0, []
    for step in range(max_new_tokens):
        total = seen + ids.shape[1]
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(seen, total, dtype=np.int64)[None],
            "use_cache_branch": np.array([seen > 0]),
            **dict(zip(past_names, past)),
        }
        logits, *past = session.run(["logits", *present_names], {k: v for k, v in feed.items() if k in inputs})
        scores = logits[0, -1].astype(np.float32)
        if eos_id is not None and step < min_new_tokens:
            scores[eos_id] = -np.inf
        token = int(scores.argmax())
        if token == eos_id:
            break
        out.append(token)
        seen, ids = total, np.asarray([[token]], dtype=np.int64)
    return out


def generate_prompts(
    model_dir: Path, runtime: str, prompts: list[list[int]], new_tokens: int, eos_id: int, threads: int
) -> None:
    """Generate exactly `new_tokens` tokens for every prompt at batch 1 (the probe's `--work generate`)."""
    if runtime_kind(runtime) == "onnx":
        session = load_onnx_session(model_dir, threads)
        for prompt in prompts:
            session_greedy(session, prompt, new_tokens, eos_id, min_new_tokens=new_tokens)
        return
    import torch
    from transformers import AutoModelForCausalLM

    from components.kit.generation import greedy_generate

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    for prompt in prompts:
        ids = torch.tensor([prompt])
        greedy_generate(
            model,
            ids,
            torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_id=eos_id,
            eos_id=eos_id,
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="model folder (or .onnx file)")
    parser.add_argument("--runtime", required=True, choices=["torch", "onnx"])
    parser.add_argument("--prepared", required=True, type=Path, help="folder holding test.parquet")
    parser.add_argument("--n", type=int, default=100, help="test sentences to predict")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument(
        "--work",
        choices=["predict", "generate"],
        default="predict",
        help="predict: classify the sentences in batches; generate: a decoder continues prompts",
    )
    parser.add_argument("--prefix-tokens", type=int, default=8, help="generate: prompt tokens per sentence")
    parser.add_argument("--new-tokens", type=int, default=32, help="generate: tokens generated per prompt")
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="generate: tokenizer folder, when not the model's own folder"
    )
    args = parser.parse_args(argv)
    if args.work == "generate":
        return main_generate(args)

    runner = load_runner(args.model, runtime_kind(args.runtime), args.threads)  # fails fast on a bad path
    texts = read_test_texts(args.prepared, args.n)
    tokenizer_dir = args.model if args.model.is_dir() else args.model.parent
    ids, pad_id = tokenize(tokenizer_dir, texts, args.max_length)
    for start in range(0, len(ids), BATCH_SIZE):
        runner(pad_batch(ids[start : start + BATCH_SIZE], pad_id))
    result = {"peak_rss_mb": peak_rss_mb(), "n": len(ids), "runtime": args.runtime, "model": str(args.model)}
    print(json.dumps(result), flush=True)
    return result


def main_generate(args: argparse.Namespace) -> dict:
    texts = read_test_texts(args.prepared, args.n)
    tokenizer_dir = args.tokenizer or (args.model if args.model.is_dir() else args.model.parent)
    ids, _ = tokenize(tokenizer_dir, texts, args.max_length)
    prompts = [row[: args.prefix_tokens] for row in ids if row]
    if (tokenizer_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        eos_id = _token_id(tokenizer_dir, Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")), "eos_token", 0)
    else:
        from transformers import AutoTokenizer

        eos_id = AutoTokenizer.from_pretrained(str(tokenizer_dir)).eos_token_id or 0
    generate_prompts(args.model, args.runtime, prompts, args.new_tokens, eos_id, args.threads)
    result = {
        "peak_rss_mb": peak_rss_mb(),
        "n": len(prompts),
        "runtime": args.runtime,
        "model": str(args.model),
        "work": args.work,
        "new_tokens": args.new_tokens,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
