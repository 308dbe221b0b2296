"""Latency, memory and size measurements of a sequence classifier, PyTorch or ONNX Runtime.

Used by the evaluate stage, `miniaturize bench`, the search and the quantize stage (timing), by every stage
that opens an ONNX Runtime session (`load_onnx_session`), and by the causal-lm stages for runtime names, ONNX
sizes and peak memory.

The evaluate stage builds a *runner* per model (`load_runner(path, runtime, threads)`): a callable that
takes one pre-tokenised batch (a dict of int64 numpy arrays `input_ids`, `attention_mask`,
`token_type_ids`) and returns the logits: one matrix, also from a multitask export's one output per task
(`logit_outputs`). Batches are built from real test sentences before any clock starts (`batched_inputs`), so
a timed call covers the model forward only, never tokenisation or padding.

- `time_calls` runs warm-up calls, then timed calls (`time.perf_counter`, milliseconds);
  `latency_stats` summarises them (pure).
- `time_rounds` times several models like a benchmark: each is warmed up once, then the models take turns
  in `rounds` rounds, each round in a rotated order (`round_order`) and with its share of the calls
  (`calls_per_round`), so a change in the machine's load during the run falls on every model alike.
  `round_stats` summarises one model's rounds (pure): the median over rounds of each round's p50 and p95,
  and the spread, the largest round p50 minus the smallest (ms). `latency_figures` shapes both batch sizes'
  summaries into a report's `latency_ms` (medians and spreads) and `latency_rounds_ms` (each round's figures).
- `peak_rss_mb` starts a fresh Python process (`python -m components.kit.rss_probe`) that loads one model
  and predicts some test sentences (or, with `--work generate`, continues prompts with a decoder), so each
  model's peak resident memory is measured on its own, without the memory of the models evaluated before it.
- `onnx_params`, `onnx_precision` and `onnx_size_bytes` read an ONNX file's initializers.

Nothing heavy is imported at module level: torch, transformers and onnxruntime are imported by the
functions that need them. That keeps `components.kit.rss_probe` (which imports this module) free of torch
when it measures an ONNX model; torch alone costs about 250-500 MB of RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

Batch = dict[str, np.ndarray]
Runner = Callable[[Batch], np.ndarray]

TORCH_RUNTIMES = ("torch", "pytorch")
ONNX_RUNTIMES = ("onnx", "onnxruntime")
BATCH_SIZE = 32  # sentences per call in the batch-32 latency benchmark (the evaluate stage and `miniaturize bench`)
# Ops that only appear in a quantized graph (ONNX Runtime dynamic / static / QDQ quantization).
QUANTIZED_OPS = {
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QEmbedLayerNormalization",
    "MatMulIntegerToFloat",
    "QGemm",
}
# A multitask model's ONNX export has one output per task, `logits_<task>`, in task order
# (components.classification.export); the edge script (edge_predict.py) stands alone and repeats the prefix.
TASK_LOGITS_PREFIX = "logits_"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # components/kit/latency.py -> the checkout


# ---------------------------------------------------------------- statistics and timing (pure-ish)


def latency_stats(samples_ms: list[float]) -> dict:
    """p50, p95 (numpy linear-interpolated percentiles), mean, in ms, and the sample count n.

    An empty list gives NaN statistics and n = 0.
    """
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "mean": float("nan"), "n": 0}
    p50, p95 = np.percentile(samples, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "mean": float(samples.mean()), "n": int(samples.size)}


def time_calls(fn: Callable, inputs: list, warmup: int, calls: int) -> list[float]:
    """`warmup` untimed calls, then `calls` timed calls of fn(input), cycling through inputs; ms each."""
    if not inputs:
        raise ValueError("time_calls needs at least one input")
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    samples = []
    for i in range(calls):
        x = inputs[(warmup + i) % len(inputs)]
        start = time.perf_counter()
        fn(x)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


# ---------------------------------------------------------------- alternating rounds (benchmark timing)


def calls_per_round(total: int, rounds: int) -> list[int]:
    """`total` timed calls split over `rounds` as evenly as they go, the first rounds taking one call more where
    they do not divide: the shares sum to `total` and each is at least one, so with fewer calls than rounds
    there are only `total` rounds of one call each."""
    if total < 1 or rounds < 1:
        raise ValueError(f"calls_per_round needs at least one call and one round, got {total} and {rounds}")
    rounds = min(rounds, total)
    share, extra = divmod(total, rounds)
    return [share + 1 if r < extra else share for r in range(rounds)]


def round_order(names: list[str], round_index: int) -> list[str]:
    """The order the models run in round `round_index` (0-based): `names` rotated left by that many places,
    so the first model of the list goes first in round 0, the second in round 1, and so on: no model always
    runs first (just after the warm-ups) or always right after the same other model."""
    if not names:
        return []
    shift = round_index % len(names)
    return list(names[shift:]) + list(names[:shift])


def time_rounds(
    fns: dict[str, Callable],
    inputs: dict[str, list],
    warmup: int,
    total_calls: int,
    rounds: int,
    after_each: Callable[[str, int, list[float]], None] | None = None,
) -> dict[str, list[list[float]]]:
    """Each model's timed calls (ms), round by round: every model of `fns` first gets `warmup` untimed calls
    (once, all before the first round), then in round r every model, in `round_order(names, r)`, makes its
    share `calls_per_round(total_calls, rounds)[r]` of timed calls of fn(input) on its own `inputs[name]`.
    A model's calls go on cycling through its inputs from round to round, as one `time_calls` run would.
    `after_each(name, r, samples)` is called after each model's share (progress, printing)."""
    shares = calls_per_round(total_calls, rounds)
    names = list(fns)
    for name in names:
        time_calls(fns[name], inputs[name], warmup, 0)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for r, share in enumerate(shares):
        start = warmup + sum(shares[:r])  # where this round's calls start in the model's cycle of inputs
        for name in round_order(names, r):
            cycle = inputs[name]
            offset = start % len(cycle)
            samples[name].append(time_calls(fns[name], cycle[offset:] + cycle[:offset], 0, share))
            if after_each is not None:
                after_each(name, r, samples[name][-1])
    return samples


def round_stats(rounds_ms: list[list[float]]) -> dict:
    """One model's timings in rounds (a list of ms samples per round), summarised: `p50` and `p95`, the median
    over rounds of each round's p50 and p95 (a round disturbed by load moves them less than it moves one
    pooled percentile); `p50_spread`, the largest round p50 minus the smallest (ms; 0 for one round);
    `round_p50` and `round_p95`, each round's own; `n`, the calls timed in all. No rounds: NaN figures."""
    nan = float("nan")
    if not rounds_ms:
        return {"p50": nan, "p95": nan, "p50_spread": nan, "round_p50": [], "round_p95": [], "n": 0}
    per_round = [latency_stats(samples) for samples in rounds_ms]
    p50s, p95s = [r["p50"] for r in per_round], [r["p95"] for r in per_round]
    return {
        "p50": float(np.median(p50s)),
        "p95": float(np.median(p95s)),
        "p50_spread": float(max(p50s) - min(p50s)),
        "round_p50": p50s,
        "round_p95": p95s,
        "n": sum(r["n"] for r in per_round),
    }


def latency_figures(batch1: dict, batch32: dict) -> tuple[dict, dict]:
    """A report entry's latency from the `round_stats` of its batch-1 and batch-32 rounds: `latency_ms` (the
    medians, `batch1_p50`, `batch1_p95`, `batch32_p50`, `batch32_p95`, and the spreads `batch1_p50_spread`,
    `batch32_p50_spread`, all ms: what the gate and the comparisons read) and `latency_rounds_ms` (each
    round's p50 and p95, lists of ms)."""
    latency_ms, rounds_ms = {}, {}
    for prefix, stats in (("batch1", batch1), ("batch32", batch32)):
        latency_ms |= {f"{prefix}_p50": stats["p50"], f"{prefix}_p95": stats["p95"]}
        rounds_ms |= {f"{prefix}_p50": list(stats["round_p50"]), f"{prefix}_p95": list(stats["round_p95"])}
    latency_ms |= {"batch1_p50_spread": batch1["p50_spread"], "batch32_p50_spread": batch32["p50_spread"]}
    return latency_ms, rounds_ms


# ---------------------------------------------------------------- batches


def pad_batch(rows: list[list[int]], pad_id: int) -> Batch:
    """Token id lists padded to the longest row: int64 input_ids, attention_mask, token_type_ids."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def batched_inputs(input_ids: list[list[int]], pad_id: int, batch_size: int) -> list[Batch]:
    """Consecutive groups of `batch_size` sentences, each padded to its own longest sentence.

    batch_size 1 gives single unpadded sentences. A trailing partial group is dropped when at least one
    full group exists, so every timed call has the same batch size; a split smaller than one batch
    gives a single batch of all its sentences.
    """
    if not input_ids:
        raise ValueError("no sentences to batch")
    full = len(input_ids) // batch_size
    if full == 0:
        return [pad_batch(input_ids, pad_id)]
    return [pad_batch(input_ids[i * batch_size : (i + 1) * batch_size], pad_id) for i in range(full)]


def runner_logits(runner: Runner, input_ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits of every sentence (in input order), batching sentences of similar length together."""
    order = np.argsort([len(x) for x in input_ids], kind="stable")
    parts: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        parts.append(np.asarray(runner(pad_batch([input_ids[i] for i in index], pad_id)), dtype=np.float32))
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    out = np.empty((len(input_ids), parts[0].shape[-1]), dtype=np.float32)
    out[order] = np.concatenate(parts)
    return out


# ---------------------------------------------------------------- runners


def runtime_kind(runtime: str) -> str:
    """'torch' or 'onnx' for any accepted spelling ('pytorch', 'onnxruntime', ...)."""
    name = runtime.lower().split()[0] if runtime.strip() else runtime
    if name in TORCH_RUNTIMES:
        return "torch"
    if name in ONNX_RUNTIMES:
        return "onnx"
    raise ValueError(f"unknown runtime {runtime!r}: use one of {TORCH_RUNTIMES + ONNX_RUNTIMES}")


def load_torch_model(model_dir: str | Path, threads: int):
    """An eval-mode AutoModelForSequenceClassification; sets torch's intra-op thread count (global)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir), use_safetensors=True).eval()


def torch_runner(model) -> Runner:
    import torch

    takes_token_types = getattr(model.config, "type_vocab_size", 0) > 0

    def run(batch: Batch) -> np.ndarray:
        feed = {k: torch.from_numpy(v) for k, v in batch.items() if takes_token_types or k != "token_type_ids"}
        with torch.inference_mode():
            return model(**feed).logits.float().numpy()

    return run


def find_onnx_file(path: str | Path) -> Path:
    """The .onnx file itself, a folder's `model.onnx`, or a folder's only .onnx file."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "model.onnx").is_file():
        return path / "model.onnx"
    candidates = sorted(path.glob("*.onnx"))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(
        f"{path}: expected model.onnx or exactly one .onnx file, found {[c.name for c in candidates] or 'none'}"
    )


def load_onnx_session(path: str | Path, threads: int = 2, spinning: bool = True):
    """A CPU InferenceSession with `threads` intra-op threads and one inter-op thread, of an .onnx file or a
    folder's model (`find_onnx_file`). Every stage opens its sessions here; it lives in this module, which
    imports nothing heavy, so that the RSS probe of an ONNX model never imports torch.

    `spinning=False` stops the intra-op threads from spin-waiting after a call: several sessions run one after
    another in one process (a device answering with one model per task) otherwise leave each other's
    threads spinning on the same cores, measured here 4x slower in all."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(find_onnx_file(path)), sess_options=options, providers=["CPUExecutionProvider"])


def logit_outputs(names: list[str]) -> list[str]:
    """The outputs of an ONNX classifier (`names`, in graph order) whose concatenation on the last axis, in
    that order, is its logits: `logits` when the graph has it, else a multitask export's one output per task
    (`logits_<task>`, `TASK_LOGITS_PREFIX`), else the first output."""
    if "logits" in names:
        return ["logits"]
    return [name for name in names if name.startswith(TASK_LOGITS_PREFIX)] or names[:1]


def onnx_runner(session) -> Runner:
    """Feeds only the inputs the graph declares (token_type_ids is absent from some architectures); a multitask
    export's per-task outputs come back as one matrix (`logit_outputs`)."""
    wanted = [i.name for i in session.get_inputs()]
    outputs = logit_outputs([o.name for o in session.get_outputs()])

    def run(batch: Batch) -> np.ndarray:
        found = session.run(outputs, {name: batch[name] for name in wanted})
        return found[0] if len(found) == 1 else np.concatenate(found, axis=-1)

    return run


def load_runner(path: str | Path, runtime: str, threads: int) -> Runner:
    if runtime_kind(runtime) == "torch":
        return torch_runner(load_torch_model(path, threads))
    return onnx_runner(load_onnx_session(path, threads))


# ---------------------------------------------------------------- ONNX file facts


def _onnx_graph(path: str | Path):
    import onnx

    return onnx.load(str(find_onnx_file(path)), load_external_data=False).graph


def onnx_params(path: str | Path) -> int:
    """Parameter count of an ONNX model: elements of its weight initializers.

    Counted: float initializers (fp32/fp16/bf16/fp64) and 8-bit integer ones (the int8/uint8 weights of a
    quantized model, so a quantized weight counts once, as its `X_quantized` tensor). Not counted:
    - `X_scale` / `X_zero_point` of a quantized weight `X_quantized` (quantization metadata, not weights);
    - int32/int64 initializers (shapes, indices, the position-id buffer: buffers, not parameters).
    On a trained model this matches `modeling.count_params` of the PyTorch model it was exported from.
    On an untrained one it can be lower: the exporter merges identical initializers (all-zero biases,
    all-one LayerNorm weights) into one tensor.
    """
    from onnx import TensorProto

    counted = {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.BFLOAT16,
        TensorProto.DOUBLE,
        TensorProto.INT8,
        TensorProto.UINT8,
    }
    initializers = list(_onnx_graph(path).initializer)
    quantized_bases = {i.name[: -len("_quantized")] for i in initializers if i.name.endswith("_quantized")}
    total = 0
    for init in initializers:
        if init.data_type not in counted:
            continue
        if _quantization_metadata(init.name, quantized_bases):
            continue
        total += int(np.prod(init.dims, dtype=np.int64)) if len(init.dims) else 1
    return total


def _quantization_metadata(name: str, quantized_bases: set[str]) -> bool:
    """True for `X_scale` / `X_zero_point` when `X_quantized` exists (ONNX Runtime's quantizer naming)."""
    for suffix in ("_scale", "_zero_point"):
        if name.endswith(suffix) and name[: -len(suffix)] in quantized_bases:
            return True
    return False


def onnx_precision(path: str | Path) -> str:
    """'int8' when the graph holds quantization ops or 8-bit weights, else 'fp16' or 'fp32'."""
    from onnx import TensorProto

    graph = _onnx_graph(path)
    types = {i.data_type for i in graph.initializer}
    if {n.op_type for n in graph.node} & QUANTIZED_OPS or types & {TensorProto.INT8, TensorProto.UINT8}:
        return "int8"
    if TensorProto.FLOAT16 in types:
        return "fp16"
    return "fp32"


def onnx_size_bytes(path: str | Path) -> int:
    """Bytes of one ONNX model: the .onnx file plus the external-data files it references.

    Unlike `modeling.dir_size_bytes` of the folder, this does not add up a second .onnx file that
    happens to sit in the same folder (e.g. an fp32 model next to its int8 copy).
    """
    file = find_onnx_file(path)
    external = set()
    for init in _onnx_graph(file).initializer:
        for entry in init.external_data:
            if entry.key == "location":
                external.add(entry.value)
    return file.stat().st_size + sum(
        (file.parent / name).stat().st_size for name in external if (file.parent / name).is_file()
    )


# ---------------------------------------------------------------- memory


def peak_rss_mb(
    model_dir: str | Path,
    runtime: str,
    prepared: str | Path,
    n_sentences: int,
    threads: int,
    max_length: int = 64,
    timeout_s: float = 600.0,
    probe_args: tuple[str, ...] = (),
) -> float:
    """Peak resident memory (MB) of a fresh process that loads the model and predicts n test sentences;
    `probe_args` are further `rss_probe` options (`--work generate ...`: a decoder continues n prompts)."""
    env = dict(os.environ)
    # The probe must import this checkout's components, whichever copy is installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = str(threads)
    command = [
        sys.executable,
        "-m",
        "components.kit.rss_probe",
        "--model",
        str(model_dir),
        "--runtime",
        runtime_kind(runtime),
        "--prepared",
        str(prepared),
        "--n",
        str(n_sentences),
        "--threads",
        str(threads),
        "--max-length",
        str(max_length),
        *probe_args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"rss probe failed for {model_dir} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"rss probe for {model_dir} printed nothing; stderr:\n{done.stderr[-2000:]}")
    return float(json.loads(lines[-1])["peak_rss_mb"])
