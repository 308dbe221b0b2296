"""Stage evaluate of the causal-lm task: measure every decoder the pipeline built, compare, and gate.

`run(cfg, gate, data_dir, models, out_dir, tracker, seed, max_length)` measures each `ModelSpec`
(runtime "pytorch": a Hugging Face folder; "onnxruntime": an export or int8 folder of `causal_lm.export`)
in that runtime, on the test split of `data_dir`, with `cfg.threads` intra-op threads for every model:

- perplexity: exp of the mean negative log-likelihood over every predicted test token (each sentence
  followed by eos, truncated to `max_length` tokens; a sentence's first token has no context and is not
  scored), pooled over all sentences;
- bleu: sacrebleu corpus BLEU (0..100) of greedy continuations: the first `cfg.prefix_tokens` tokens of up
  to `cfg.bleu_sentences` test sentences longer than that are the prompt, the model adds up to
  `cfg.continuation_tokens` tokens (stopping at eos) and the reference is the rest of the true sentence;
  bleu_vs_teacher scores the same continuations against the teacher's (absent from the teacher's entry,
  "-" in the markdown: the teacher against itself is not a measurement);
- tokens_per_s: greedy generation at batch 1 with the KV cache of exactly `cfg.generation_tokens` new tokens
  (eos is suppressed), timed like a benchmark: every model loaded and warmed up with one generation, then the
  models take turns in `cfg.rounds` rounds, each round in a rotated order (`latency.time_rounds`) and with its
  share of `cfg.generation_prompts` timed generations; a round's figure is its median generation, the entry's
  `tokens_per_s` the median over rounds, `tokens_per_s_spread` the largest round figure minus the smallest and
  `tokens_per_s_rounds` each round's, so a change in the machine's load falls on every model alike;
- size_bytes (weight files), params, and peak_rss_mb of a fresh process that loads the model and
  generates for `cfg.rss_prompts` prompts (`python -m components.kit.rss_probe --work generate`).

It then compares "final" with "teacher" (`gate.compare_lm_to_teacher`), and, like for like, with the teacher
exported to ONNX Runtime fp32 ("teacher_onnx_fp32", timed by the same harness as the students) and with the
quantize-only baseline ("baseline_teacher_int8": the teacher exported and int8-quantized) when they are given
(`final_vs_teacher_onnx_fp32`, `final_vs_baseline_teacher_int8`: the same ratios), applies the gate (on the
PyTorch teacher ratios)
(`gate.decide_lm`), compares "student" with "student_without_teacher" when both are given (the ablation),
and writes out_dir/compression_report.json and out_dir/compression_report.md, each atomically. The
report has the classification report's shape with task "causal-lm".

`split_perplexity` measures one decoder's perplexity on one split, nothing else: the register flow uses it
to re-measure the champion on a candidate's data.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable

from components.causal_lm import HISTORY_FILE, SEEDS_FILE
from components.config import SPLITS, LMEvaluateConfig, LMGateConfig
from components.kit import latency
from components.kit.gate import GateDecision, compare_lm_to_teacher, decide_lm
from components.kit.generation import greedy, load, load_tokenizer
from components.kit.report import (
    ModelSpec,
    environment_info,
    fmt,
    gate_lines,
    gate_summary,
    versus_lines,
    with_spread,
    write_report,
)
from components.kit.rss_probe import session_greedy
from components.kit.tracking import StageResult, Tracker

TEACHER, FINAL, STUDENT, ABLATION = "teacher", "final", "student", "student_without_teacher"
TEACHER_ORT, BASELINE = "teacher_onnx_fp32", "baseline_teacher_int8"
# final against each reference model the report has: the gate reads the first (the PyTorch teacher)
VERSUS = (TEACHER, TEACHER_ORT, BASELINE)
BLEU_BATCH = 16  # prompts per generate call for BLEU (left-padded); speed is timed at batch 1 separately
PERPLEXITY_BATCH = 16
ENTRY_METRICS = (
    "perplexity",
    "bleu",
    "bleu_vs_teacher",
    "tokens_per_s",
    "tokens_per_s_spread",
    "size_bytes",
    "params",
    "peak_rss_mb",
)


# ---------------------------------------------------------------- pure helpers


def nll_to_perplexity(total_nll: float, tokens: int) -> float:
    """exp(mean NLL) in nats per token; NaN for no tokens."""
    return math.exp(total_nll / tokens) if tokens else math.nan


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU (0..100) with its default 13a tokenisation; NaN for no sentences."""
    import sacrebleu

    if not hypotheses:
        return math.nan
    score = float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    return min(100.0, max(0.0, score))  # identical texts can score 100.00000000000004


def bleu_prompts(tokenizer, texts: list[str], prefix_tokens: int, n: int) -> tuple[list[list[int]], list[str]]:
    """Prompts (the first `prefix_tokens` tokens) and references (the decoded rest) of up to `n` sentences
    with more than `prefix_tokens` tokens, in test order."""
    prompts, references = [], []
    for text in texts:
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        if len(ids) > prefix_tokens:
            prompts.append(ids[:prefix_tokens])
            references.append(tokenizer.decode(ids[prefix_tokens:], skip_special_tokens=True).strip())
        if len(prompts) == n:
            break
    return prompts, references


def ablation_summary(entries: dict[str, dict], seeds: dict | None = None) -> dict | None:
    """What distillation bought: the student against the same student trained without the teacher; with
    `seeds` (the distill stage's SEEDS_FILE), the same comparison over several training seeds."""
    if STUDENT not in entries or ABLATION not in entries:
        return None
    s, a = entries[STUDENT], entries[ABLATION]
    return ({"seeds": seeds} if seeds else {}) | {
        "student_perplexity": s["perplexity"],
        "student_without_teacher_perplexity": a["perplexity"],
        "student_bleu": s["bleu"],
        "student_without_teacher_bleu": a["bleu"],
        # below 1: distillation lowered perplexity; positive: distillation raised BLEU
        "distillation_perplexity_ratio": s["perplexity"] / a["perplexity"] if a["perplexity"] else math.nan,
        "distillation_bleu_gain_points": s["bleu"] - a["bleu"],
    }


def metrics_to_log(report: dict) -> dict[str, float]:
    """Flat tracker metrics: `final.perplexity`, `teacher.tokens_per_s`, `final_vs_teacher.size_ratio`, ..."""
    out = {
        f"{name}.{key}": float(entry[key])
        for name, entry in report["models"].items()
        for key in ENTRY_METRICS
        if entry.get(key) is not None
    }
    for section in (*(f"final_vs_{name}" for name in VERSUS), "ablation"):
        out |= {
            f"{section}.{k}": float(v) for k, v in (report.get(section) or {}).items() if isinstance(v, (int, float))
        }
    seeds = (report.get("ablation") or {}).get("seeds") or {}
    out |= {f"ablation.seeds.{k}": float(v) for k, v in seeds.items() if isinstance(v, (int, float))}
    if curve := report.get("teacher_training"):
        out["teacher_training.epochs_run"] = float(len(curve["epochs"]))
    out["gate.passed"] = float(report["gate"]["passed"])
    return out


def dataset_card(data_dir: Path) -> dict:
    """source, sha256 and rows per split: from data_card.json when the data stage wrote one, otherwise the
    sha256 of the three split files (in split order) and their row counts."""
    import pyarrow.parquet as pq

    card_file = data_dir / "data_card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    files = [data_dir / f"{split}.parquet" for split in SPLITS]
    sha256 = card.get("sha256")
    if not sha256:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.read_bytes() if file.is_file() else b"")
        sha256 = digest.hexdigest()
    rows = card.get("rows") or {s: pq.ParquetFile(f).metadata.num_rows for s, f in zip(SPLITS, files) if f.is_file()}
    return {
        "source": str(card.get("source", data_dir)),
        "sha256": str(sha256),
        "rows": {split: int(rows.get(split, 0)) for split in SPLITS},
    }


# ---------------------------------------------------------------- measuring


def perplexity(model, tokenizer, texts: list[str], max_length: int, batch_size: int = PERPLEXITY_BATCH) -> float:
    """Test perplexity of a PyTorch causal LM or an `ORTModelForCausalLM` (one full-sequence forward per
    batch, no cache): every sentence + eos, truncated to `max_length` tokens, right-padded."""
    import torch

    eos = tokenizer.eos_token_id
    rows = [(tokenizer(str(t), add_special_tokens=False)["input_ids"] + [eos])[:max_length] for t in texts]
    rows = sorted((r for r in rows if len(r) >= 2), key=len)
    total_nll, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(r) for r in batch)
        ids = torch.tensor([r + [eos] * (width - len(r)) for r in batch], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long).expand(len(batch), -1)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
        scored = mask[:, 1:].bool()
        total_nll += float(nll[scored].sum())
        tokens += int(scored.sum())
    return nll_to_perplexity(total_nll, tokens)


def generation_call(model, tokenizer, new_tokens: int):
    """A callable that continues one prompt (token ids) with exactly `new_tokens` greedy tokens at batch 1,
    as the model is deployed: a PyTorch model through `generate`; an ONNX model through the plain loop over
    its session with the KV cache (what the edge bundle's predict.py runs), not through
    `ORTModelForCausalLM.generate`, whose per-token overhead in Python is larger than a small model's step."""
    session = getattr(model, "session", None)

    def generate(prompt: list[int]) -> None:
        if session is not None:
            made = session_greedy(session, prompt, new_tokens, tokenizer.eos_token_id, min_new_tokens=new_tokens)
        else:
            made = greedy(model, tokenizer, [prompt], new_tokens, min_new_tokens=new_tokens)[0]
        if len(made) != new_tokens:
            raise RuntimeError(f"generation made {len(made)} tokens instead of {new_tokens}")

    return generate


def round_rates(rounds_ms: list[list[float]], new_tokens: int) -> dict:
    """One model's timed generations (ms each, per round) as tokens/s (pure): `tokens_per_s`, the median over
    rounds of each round's median generation; `tokens_per_s_spread`, the largest round figure minus the
    smallest; `tokens_per_s_rounds`, each round's. No rounds: NaN and an empty list."""
    rates = [new_tokens * 1000.0 / statistics.median(ms) for ms in rounds_ms if ms]
    if not rates:
        return {"tokens_per_s": math.nan, "tokens_per_s_spread": math.nan, "tokens_per_s_rounds": []}
    return {
        "tokens_per_s": float(statistics.median(rates)),
        "tokens_per_s_spread": float(max(rates) - min(rates)),
        "tokens_per_s_rounds": rates,
    }


def time_generation(generators: dict, prompts: dict[str, list[list[int]]], cfg: LMEvaluateConfig) -> dict[str, dict]:
    """Every model's `round_rates`: one warm-up generation each, then `cfg.rounds` alternating rounds of
    `cfg.generation_prompts` timed generations in all per model (`latency.time_rounds`), each model on its
    own prompts (cycled when fewer exist)."""
    if any(not p for p in prompts.values()):
        raise ValueError("no prompts to time generation with")

    def said(name: str, r: int, samples: list[float]) -> None:
        rate = round_rates([samples], cfg.generation_tokens)["tokens_per_s"]
        print(f"  evaluate tokens/s, round {r + 1}: {name} {rate:.1f}", flush=True)

    rounds = latency.time_rounds(generators, prompts, 1, cfg.generation_prompts, cfg.rounds, after_each=said)
    return {name: round_rates(samples, cfg.generation_tokens) for name, samples in rounds.items()}


def split_perplexity(model: Path, data_dir: Path, split: str, threads: int, max_length: int) -> float:
    """Perplexity of an ONNX decoder folder (an export or int8 folder) on one split of `data_dir`, scored as
    `measure_model` scores it; NaN for a split with nothing to score."""
    import pandas as pd

    model, data_dir = Path(model), Path(data_dir)
    texts = [str(t) for t in pd.read_parquet(data_dir / f"{split}.parquet", columns=["text"])["text"]]
    tokenizer = load_tokenizer(tokenizer_dir(ModelSpec("champion", model, "onnxruntime"), data_dir))
    return perplexity(load(model, "onnxruntime", threads), tokenizer, texts, max_length)


def generation_peak_rss_mb(spec: ModelSpec, cfg: LMEvaluateConfig, data_dir: Path, max_length: int) -> float:
    """Peak resident memory (MB) of a fresh process that loads the decoder and generates
    `cfg.generation_tokens` tokens for each of `cfg.rss_prompts` prompts (`latency.peak_rss_mb`)."""
    work = (
        "--work",
        "generate",
        "--prefix-tokens",
        str(cfg.prefix_tokens),
        "--new-tokens",
        str(cfg.generation_tokens),
        "--tokenizer",
        str(tokenizer_dir(spec, data_dir)),
    )
    return latency.peak_rss_mb(
        spec.path, spec.runtime, data_dir, cfg.rss_prompts, cfg.threads, max_length, probe_args=work
    )


def tokenizer_dir(spec: ModelSpec, data_dir: Path) -> Path:
    """The model's own folder when it holds a tokenizer, else the data folder's tokenizer/."""
    folder = spec.path if spec.path.is_dir() else spec.path.parent
    has_own = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    return folder if has_own else data_dir / "tokenizer"


def measure_model(
    spec: ModelSpec,
    cfg: LMEvaluateConfig,
    data_dir: Path,
    texts: list[str],
    max_length: int,
    teacher_continuations: list[str] | None,
) -> tuple[dict, list[str], Callable, list[list[int]]]:
    """One report entry without its speed and memory (None until `measure_all` fills them), the model's decoded
    BLEU continuations, its generation call (`generation_call`, holding the loaded model) and its prompts."""

    def say(what: str) -> None:
        print(f"  evaluate {spec.name}: {what}", flush=True)

    say(f"loading ({spec.runtime}, {spec.path})")
    tokenizer = load_tokenizer(tokenizer_dir(spec, data_dir))
    model = load(spec.path, spec.runtime, cfg.threads)
    # An ONNX export stores the tied lm_head and embedding as two tensors: its size and parameter count hold
    # the output matrix twice.
    runtime, size, params = spec.weights_facts(model)

    say(f"perplexity on {len(texts)} test sentences")
    ppl = perplexity(model, tokenizer, texts, max_length)
    prompts, references = bleu_prompts(tokenizer, texts, cfg.prefix_tokens, cfg.bleu_sentences)
    say(f"BLEU of {len(prompts)} greedy continuations of {cfg.continuation_tokens} tokens")
    continuations = [
        tokenizer.decode(c, skip_special_tokens=True).strip()
        for c in greedy(model, tokenizer, prompts, cfg.continuation_tokens, batch_size=BLEU_BATCH)
    ]
    bleu = corpus_bleu(continuations, references)
    # None for the teacher itself (no teacher continuations yet): it is left out of its entry
    vs_teacher = None if teacher_continuations is None else corpus_bleu(continuations, teacher_continuations)
    entry = {
        "runtime": runtime,
        "perplexity": ppl,
        "bleu": bleu,
        **({} if vs_teacher is None else {"bleu_vs_teacher": vs_teacher}),
        "bleu_sentences": len(prompts),
        "tokens_per_s": None,
        "size_bytes": int(size),
        "params": int(params),
        "peak_rss_mb": None,
    }
    generate = generation_call(model, tokenizer, cfg.generation_tokens)
    return entry, continuations, generate, prompts or [[tokenizer.eos_token_id]]


def read_json_beside(model_dir: Path | None, name: str) -> dict | None:
    """A record a training stage wrote in a model's folder (the teacher's curve, the seeds comparison)."""
    path = Path(model_dir) / name if model_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


# ---------------------------------------------------------------- writing


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Compression report (causal LM)",
        "",
        f"Dataset `{report['dataset']['source']}` (sha256 `{report['dataset']['sha256'][:12]}`), "
        f"test rows: {report['dataset']['rows']['test']}. Speed and memory on {env['cpu']}, "
        f"{env['threads']} intra-op thread(s) for every model."
        + (
            f" tokens/s: batch-1 greedy generation with the KV cache, every model loaded first, then the models "
            f"taking turns in {env['generation_rounds']} rounds (the order rotated each round) after one warm-up "
            f"generation; the median over rounds, the spread over rounds in brackets."
            if env.get("generation_rounds")
            else ""
        ),
        "",
        "| model | runtime | perplexity | BLEU | BLEU vs teacher | tokens/s | size (MB) | params | peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        lines.append(
            f"| {name} | {m['runtime']} | {fmt(m['perplexity'], '.2f')} | {fmt(m['bleu'], '.2f')} "
            f"| {fmt(m['bleu_vs_teacher'], '.2f') if 'bleu_vs_teacher' in m else '-'} "
            f"| {with_spread(m, 'tokens_per_s', '.1f')} "
            f"| {m['size_bytes'] / 1e6:.2f} | {m['params']:,} | {fmt(m['peak_rss_mb'], '.0f')} |"
        )
    for name in VERSUS:
        if (r := report.get(f"final_vs_{name}")) is not None:
            lines += versus_lines(
                f"final vs {name}",
                {
                    "size ratio": f"{fmt(r['size_ratio'], '.2f')}x",
                    "generation speed-up": f"{fmt(r['generation_speedup'], '.2f')}x",
                    "perplexity ratio": fmt(r["perplexity_ratio"], ".3f"),
                    "BLEU drop (points)": fmt(r["bleu_drop_points"], "+.2f"),
                },
            )
    lines += gate_lines(report["gate"])
    if ablation := report.get("ablation"):
        lines += [
            "",
            "## Ablation: what distillation buys",
            "",
            f"The same student trained without the teacher reaches perplexity "
            f"{fmt(ablation['student_without_teacher_perplexity'], '.2f')} and BLEU "
            f"{fmt(ablation['student_without_teacher_bleu'], '.2f')}; distilled, "
            f"{fmt(ablation['student_perplexity'], '.2f')} and {fmt(ablation['student_bleu'], '.2f')} "
            f"({fmt(ablation['distillation_bleu_gain_points'], '+.2f')} BLEU points).",
        ]
        if seeds := ablation.get("seeds"):
            lines += [
                "",
                f"Over {len(seeds['seeds'])} training seeds (the distill stage, PyTorch, same teacher and split; "
                "scored as training scores validation, where a sentence over max_length tokens keeps its end "
                "token, so this run's seed differs slightly from the table above), "
                f"test perplexity distilled {seeds['student_test_perplexity_mean']:.2f} "
                f"(std {seeds['student_test_perplexity_std']:.2f}) against "
                f"{seeds['student_without_teacher_test_perplexity_mean']:.2f} "
                f"(std {seeds['student_without_teacher_test_perplexity_std']:.2f}) without the teacher; "
                f"distillation lower on {seeds['distillation_wins']:.0f} of {len(seeds['seeds'])} seeds.",
                "",
                "| seed | distilled | without teacher |",
                "|---:|---:|---:|",
                *(
                    f"| {r['seed']} | {r['student_test_perplexity']:.2f} "
                    f"| {r['student_without_teacher_test_perplexity']:.2f} |"
                    for r in seeds["seeds"]
                ),
            ]
    if curve := report.get("teacher_training"):
        patience = f", stopping after {curve['patience']} epoch(s) without a lower one" if curve["patience"] else ""
        lines += [
            "",
            "## The teacher's validation curve",
            "",
            f"Trained for at most {curve['max_epochs']} epochs{patience}; epoch {curve['best_epoch']} kept. "
            f"Untrained: validation perplexity {curve['untrained_val_perplexity']:.1f}.",
            "",
            "| epoch | train loss | validation perplexity | seconds |",
            "|---:|---:|---:|---:|",
            *(
                f"| {i} | {e['train_loss']:.3f} | {e['val_perplexity']:.2f} | {e['epoch_seconds']:.0f} |"
                for i, e in enumerate(curve["epochs"], 1)
            ),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the stage


def measure_all(
    models: list[ModelSpec], cfg: LMEvaluateConfig, data_dir: Path, texts: list[str], max_length: int, seed: int
) -> dict[str, dict]:
    """Every model's report entry, in the caller's order: all models loaded and scored (the teacher first: the
    others' BLEU is also scored against its continuations), then their generation timed in alternating rounds
    (`time_generation`), then released, then their peak RSS measured one fresh process at a time. torch's
    thread count is restored afterwards."""
    import torch

    threads_before = torch.get_num_threads()
    torch.manual_seed(seed)  # generation is greedy; this only pins anything a model might sample
    entries: dict[str, dict] = {}
    generators: dict[str, Callable] = {}
    prompts: dict[str, list[list[int]]] = {}
    teacher_continuations: list[str] | None = None
    try:
        for spec in sorted(models, key=lambda m: m.name != TEACHER):
            entries[spec.name], continuations, generators[spec.name], prompts[spec.name] = measure_model(
                spec, cfg, data_dir, texts, max_length, teacher_continuations
            )
            if spec.name == TEACHER:
                teacher_continuations = continuations
        order = [m.name for m in models]  # the rounds rotate the caller's order: teacher, final, ...
        print(
            f"  evaluate tokens/s: {len(order)} models, {cfg.rounds} alternating rounds, "
            f"{cfg.generation_prompts} generations of {cfg.generation_tokens} tokens each in all",
            flush=True,
        )
        for name, rates in time_generation({n: generators[n] for n in order}, prompts, cfg).items():
            entries[name] |= rates
    finally:
        torch.set_num_threads(threads_before)
        generators.clear()  # the loaded models: every one is released before the RSS probes
        gc.collect()
    for spec in models:
        e = entries[spec.name]
        if spec.memory and cfg.rss_prompts:
            e["peak_rss_mb"] = generation_peak_rss_mb(spec, cfg, data_dir, max_length)
        print(
            f"  evaluate {spec.name}: {e['runtime']}, perplexity {e['perplexity']:.2f}, BLEU {e['bleu']:.2f}, "
            f"{e['tokens_per_s']:.1f} tokens/s (spread {e['tokens_per_s_spread']:.1f}), "
            f"{e['size_bytes'] / 1e6:.1f} MB, peak RSS {fmt(e['peak_rss_mb'], '.0f')} MB",
            flush=True,
        )
    return {m.name: entries[m.name] for m in models}


def run(
    cfg: LMEvaluateConfig,
    gate: LMGateConfig,
    data_dir: Path,
    models: list[ModelSpec],
    out_dir: Path,
    tracker: Tracker,
    seed: int,
    max_length: int,
) -> StageResult:
    import pandas as pd

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    models = ModelSpec.checked(models, (TEACHER, FINAL))
    texts = [str(t) for t in pd.read_parquet(data_dir / "test.parquet", columns=["text"])["text"]]
    tracker.log_params(
        {f"evaluate.{k}": v for k, v in cfg.model_dump().items()}
        | {
            "evaluate.models": ",".join(m.name for m in models),
            "evaluate.max_length": max_length,
            "evaluate.seed": seed,
        }
    )

    # measure, compare, gate
    started = time.perf_counter()
    entries = measure_all(models, cfg, data_dir, texts, max_length, seed)
    beside = {m.name: Path(m.path) for m in models}
    ratios = compare_lm_to_teacher(entries[TEACHER], entries[FINAL])
    decision: GateDecision = decide_lm(ratios, gate)
    report = {
        "task": "causal-lm",
        "dataset": dataset_card(data_dir),
        "models": entries,
        "final_vs_teacher": ratios,
        **{
            f"final_vs_{name}": compare_lm_to_teacher(entries[name], entries[FINAL])
            for name in VERSUS[1:]
            if name in entries
        },
        "gate": decision.as_dict(),
        "ablation": ablation_summary(entries, read_json_beside(beside.get(ABLATION), SEEDS_FILE)),
        "teacher_training": read_json_beside(beside[TEACHER], HISTORY_FILE),
        "environment": environment_info(cfg.threads)
        | {
            "seed": seed,
            "max_length": max_length,
            "generation_rounds": cfg.rounds,
            "generations_per_model": cfg.generation_prompts,
            "generation_tokens": cfg.generation_tokens,
            "evaluate_seconds": time.perf_counter() - started,
        },
    }

    # write and log
    json_path, md_path = write_report(out_dir, report, render_markdown)
    for path in (json_path, md_path):
        tracker.log_artifact(path)
    tracker.log_metrics(metrics_to_log(report))

    print(
        gate_summary(
            decision,
            f"{ratios['size_ratio']:.2f}x smaller, {ratios['generation_speedup']:.2f}x tokens/s, "
            f"perplexity x{ratios['perplexity_ratio']:.3f}, BLEU {-ratios['bleu_drop_points']:+.2f} points "
            f"({report['environment']['evaluate_seconds']:.0f} s)",
        ),
        flush=True,
    )
    return StageResult(
        metrics={**ratios, "gate_passed": float(decision.passed)},
        outputs={"report": json_path, "markdown": md_path},
        info={"report": report},
    )
