"""Stages export and quantize of the causal-lm task: a GPT-style decoder to ONNX, then to dynamic int8.

`export(model_dir, data_dir, out_dir, tracker)` exports a Hugging Face causal LM folder (safetensors plus
its tokenizer) with `optimum.exporters.onnx.main_export(..., task="text-generation-with-past")`: one
decoder `model.onnx` that takes and returns past key values (an empty past on the first step). It then
proves the export generates what PyTorch generates: greedy continuations of fixed prompts (the first
`PROMPT_TOKENS` tokens of the first test sentences), ONNX Runtime with its KV cache against PyTorch, token
for token. Any difference raises `LMExportCheckFailed` and leaves no `out_dir`.

`quantize(onnx_dir, data_dir, out_dir, tracker)` quantizes that export with `ORTQuantizer` (weights int8,
activations quantized on the fly; the preset chosen from the CPU flags by `components.kit.quantization`), and
reports how far its greedy continuations of the same prompts stray from fp32: the share of prompts with
an identical continuation and the share of identical tokens.

Both stages build their folder in a temporary sibling and rename it into place once done; either folder
loads with `ORTModelForCausalLM.from_pretrained(folder)` (or `load(folder, "onnxruntime")`).

Loading and greedy generation (`load`, `greedy`) are `components.kit.generation`, shared with the
evaluate stage. Heavy libraries are imported inside functions only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from components.kit.files import move_into_place, temp_sibling
from components.kit.generation import greedy, load, load_tokenizer
from components.kit.latency import onnx_size_bytes
from components.kit.quantization import quantize_into, resolve_preset
from components.kit.sources import require_safetensors
from components.kit.tracking import StageResult, Tracker

PROMPT_TOKENS = 8  # tokens of a test sentence that form one fixed prompt of the checks
CHECK_FILE, QUANTIZE_REPORT = "export_check.json", "quantize_report.json"
ONNX_CONFIG_FILES = ("config.json", "generation_config.json")


class LMExportCheckFailed(RuntimeError):
    """The exported decoder does not generate what the PyTorch model generates."""


# ---------------------------------------------------------------- prompts and checks


def fixed_prompts(data_dir: Path, tokenizer, n: int, prefix_tokens: int = PROMPT_TOKENS) -> list[list[int]]:
    """The first `prefix_tokens` tokens of each of the first `n` non-empty test sentences."""
    import pandas as pd

    texts = pd.read_parquet(Path(data_dir) / "test.parquet", columns=["text"])["text"].tolist()
    prompts = []
    for text in texts:
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"][:prefix_tokens]
        if ids:
            prompts.append(ids)
        if len(prompts) == n:
            break
    if not prompts:
        raise ValueError(f"{data_dir}/test.parquet has no sentence to prompt with")
    return prompts


def continuation_agreement(reference: list[list[int]], candidate: list[list[int]]) -> dict:
    """How alike two sets of continuations are: `sequence_agreement`, the share of prompts continued
    identically, and `token_agreement`, the share of positions (up to the longer of each pair) holding
    the same token in both. 1.0 for no prompts."""
    if len(reference) != len(candidate):
        raise ValueError(f"different numbers of continuations: {len(reference)} and {len(candidate)}")
    same_rows = sum(list(a) == list(b) for a, b in zip(reference, candidate))
    positions = sum(max(len(a), len(b)) for a, b in zip(reference, candidate))
    same_tokens = sum(x == y for a, b in zip(reference, candidate) for x, y in zip(a, b))
    return {
        "sequence_agreement": same_rows / len(reference) if reference else 1.0,
        "token_agreement": same_tokens / positions if positions else 1.0,
    }


def copy_metadata(src: Path, dst: Path, tokenizer) -> None:
    """config.json, generation_config.json and the tokenizer next to model.onnx."""
    for name in ONNX_CONFIG_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
    tokenizer.save_pretrained(dst)


# ---------------------------------------------------------------- the stages


def export(
    model_dir: Path, data_dir: Path, out_dir: Path, tracker: Tracker, prompts: int = 8, max_new_tokens: int = 16
) -> StageResult:
    from optimum.exporters.onnx import main_export

    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    tokenizer = load_tokenizer(model_dir)
    tmp = temp_sibling(out_dir)
    try:
        # Optimum's own validation feeds random inputs; the check below generates from real prompts.
        require_safetensors(model_dir)  # main_export would load a pickle checkpoint as readily
        main_export(str(model_dir), tmp, task="text-generation-with-past", do_validation=False)
        copy_metadata(model_dir, tmp, tokenizer)

        prompt_ids = fixed_prompts(data_dir, tokenizer, prompts)
        reference = greedy(load(model_dir, "pytorch"), tokenizer, prompt_ids, max_new_tokens)
        exported = greedy(load(tmp, "onnxruntime"), tokenizer, prompt_ids, max_new_tokens)
        equal = sum(a == b for a, b in zip(reference, exported))
        check = {
            "prompts": len(prompt_ids),
            "prompts_equal": equal,
            "max_new_tokens": max_new_tokens,
            "passed": equal == len(prompt_ids),
            "continuations": [
                {"prompt": p, "pytorch": a, "onnxruntime": b} for p, a, b in zip(prompt_ids, reference, exported)
            ],
        }
        (tmp / CHECK_FILE).write_text(json.dumps(check, indent=2))
        metrics = {
            "onnx_bytes": float(onnx_size_bytes(tmp)),
            "prompts_equal": float(equal),
            "prompts_checked": float(len(prompt_ids)),
        }
        tracker.log_params(
            {
                "task": "text-generation-with-past",
                "prompts": len(prompt_ids),
                "prompt_tokens": PROMPT_TOKENS,
                "max_new_tokens": max_new_tokens,
            }
        )
        tracker.log_metrics(metrics)
        if not check["passed"]:
            first = next(c for c in check["continuations"] if c["pytorch"] != c["onnxruntime"])
            raise LMExportCheckFailed(
                f"ONNX export of {model_dir} generates differently from PyTorch on "
                f"{len(prompt_ids) - equal} of {len(prompt_ids)} prompts; e.g. prompt {first['prompt']}: "
                f"pytorch {first['pytorch']}, onnxruntime {first['onnxruntime']}"
            )
        move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"  export: {equal}/{len(prompt_ids)} prompts generate identically, {metrics['onnx_bytes'] / 1e6:.1f} MB",
        flush=True,
    )
    tracker.log_artifact(out_dir / CHECK_FILE)
    return StageResult(metrics=metrics, outputs={"model": out_dir}, info={"check": check})


def quantize(
    onnx_dir: Path, data_dir: Path, out_dir: Path, tracker: Tracker, prompts: int = 8, max_new_tokens: int = 16
) -> StageResult:
    onnx_dir, data_dir, out_dir = Path(onnx_dir), Path(data_dir), Path(out_dir)
    preset = resolve_preset("auto")
    tokenizer = load_tokenizer(onnx_dir)
    tmp = temp_sibling(out_dir)
    try:
        quantize_into(onnx_dir, tmp, preset, per_channel=False)
        copy_metadata(onnx_dir, tmp, tokenizer)
        prompt_ids = fixed_prompts(data_dir, tokenizer, prompts)
        fp32 = greedy(load(onnx_dir, "onnxruntime"), tokenizer, prompt_ids, max_new_tokens)
        int8 = greedy(load(tmp, "onnxruntime"), tokenizer, prompt_ids, max_new_tokens)
        agreement = continuation_agreement(fp32, int8)
        fp32_bytes, int8_bytes = onnx_size_bytes(onnx_dir), onnx_size_bytes(tmp)
        report = {
            "preset": preset,
            "per_channel": False,
            "prompts": len(prompt_ids),
            "max_new_tokens": max_new_tokens,
            **agreement,
            "size_fp32_bytes": fp32_bytes,
            "size_int8_bytes": int8_bytes,
            "size_ratio": fp32_bytes / int8_bytes,  # > 1: int8 is that many times smaller
            "continuations": [{"prompt": p, "fp32": a, "int8": b} for p, a, b in zip(prompt_ids, fp32, int8)],
        }
        (tmp / QUANTIZE_REPORT).write_text(json.dumps(report, indent=2))
        move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    metrics = {
        "onnx_bytes": float(int8_bytes),
        "size_fp32_bytes": float(fp32_bytes),
        "size_ratio": report["size_ratio"],
        "sequence_agreement": agreement["sequence_agreement"],
        "token_agreement": agreement["token_agreement"],
    }
    print(
        f"  quantize ({preset}): {int8_bytes / 1e6:.1f} MB ({report['size_ratio']:.2f}x smaller), "
        f"int8 continues {agreement['sequence_agreement']:.0%} of prompts like fp32 "
        f"({agreement['token_agreement']:.0%} of tokens)",
        flush=True,
    )
    tracker.log_params(
        {"preset": preset, "per_channel": False, "prompts": len(prompt_ids), "max_new_tokens": max_new_tokens}
    )
    tracker.log_metrics(metrics)
    tracker.log_artifact(out_dir / QUANTIZE_REPORT)
    return StageResult(metrics=metrics, outputs={"model": out_dir}, info={"preset": preset})
