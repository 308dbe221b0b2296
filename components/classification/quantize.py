"""Stage, quantize: int8 quantization of an exported ONNX classifier with ONNX Runtime (and Optimum).

`run(cfg, onnx_dir, prepared, out_dir, tracker)` quantizes `onnx_dir/model.onnx` with
`ORTQuantizer` and an `AutoQuantizationConfig` preset (weights int8 ahead of time, activations quantized
on the fly, so no calibration data is needed). Preset "auto" is decided from the CPU flags of the machine
running the stage (`components.kit.quantization`, shared with the causal-lm quantize stage). The output
folder holds the int8 `model.onnx`, `config.json`, the tokenizer and `labels.json`, like the export
folder, so later stages load either one the same way.

Quantization is chosen by measurement: each variant in `cfg.candidates` (Optimum's dynamic int8, ONNX
Runtime's fused graph with dynamic int8, the same with the word embeddings in 4 bits, static int8 calibrated
on validation sentences; per-channel weights or not) is built and measured on the validation split
(accuracy, agreement with fp32, batch-1 latency, size), and `choose_candidate` ships the fastest one that is
no slower than the fp32 export and within `cfg.max_drop_vs_fp32_points` of its accuracy, the smallest where
several are within `cfg.latency_tie_share` of the fastest; if none is eligible, the fp32 model ships and
the report says why.
Latency is timed with the kit's `latency.time_calls` and `latency_stats`, as the evaluate stage times, and
every session runs with `threads` intra-op threads: the flows pass `evaluate.threads`, so a variant is chosen
at the thread count the evaluate stage and its gate measure it with (a variant's lead can change with it).

It then reports how far the shipped model strays from fp32: the share of identical predictions (agreement) on the test
and validation splits, both accuracies, and the sizes, in `out_dir/quantize_report.json`. The folder is
built in a temporary sibling and renamed into place at the end.

A multitask export (one output per task, `logits_<task>`: `components.classification.export`) goes through
unchanged: the quantizers keep the graph's outputs, `onnx_logits` reads them as one matrix, accuracy is the
mean of the tasks' accuracies and agreement the mean of their agreements (each task's prediction is the
argmax of its own block), and the report adds each task's figures (`agreement_test.<task>`,
`accuracy_int8_test.<task>`, ...).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from components.config import QuantizeConfig
from components.kit.files import move_into_place, temp_sibling
from components.kit.heads import Heads
from components.kit.labelling import Labelling, model_labelling
from components.kit.latency import latency_stats, load_onnx_session, time_calls
from components.kit.modeling import collate, dir_size_bytes, encode_split
from components.kit.onnx_models import (
    ONNX_FILE,
    copy_model_metadata,
    onnx_logits,
    pad_id_of,
)
from components.kit.quantization import quantize_into, resolve_preset
from components.kit.tracking import StageResult, Tracker


def agreement(a_logits: np.ndarray, b_logits: np.ndarray, blocks: list[slice] | None = None) -> float:
    """Share of sentences on which two models predict the same class (1.0 for an empty split); with `blocks`
    (a multitask model's block of logits per task), the mean over the blocks of that share in each."""
    if len(a_logits) != len(b_logits):
        raise ValueError(f"different numbers of rows: {len(a_logits)} and {len(b_logits)}")
    if not len(a_logits):
        return 1.0
    shares = [(a_logits[:, cut].argmax(-1) == b_logits[:, cut].argmax(-1)).mean() for cut in blocks or [slice(None)]]
    return float(np.mean(shares))


def task_blocks(labels: Labelling) -> dict[str, slice]:
    """{task: its block of logits} of a multitask model; {} for one label per row."""
    return labels.slices if isinstance(labels, Heads) else {}


def agreements(a_logits: np.ndarray, b_logits: np.ndarray, labels: Labelling) -> dict[str, float]:
    """{"": the agreement (over tasks, their mean), task: that task's} ({"": ...} alone for one label per row)."""
    blocks = task_blocks(labels)
    overall = {"": agreement(a_logits, b_logits, list(blocks.values()))}
    return overall | {task: agreement(a_logits, b_logits, [cut]) for task, cut in blocks.items()}


def by_task(scores: dict[str, float]) -> dict[str, float]:
    """{"": overall, task: ...} from `Labelling.scores`' {"accuracy": ..., "accuracy.<task>": ...}."""
    return {key.partition(".")[2]: value for key, value in scores.items()}


def named(name: str, split: str, figures: dict[str, float]) -> dict[str, float]:
    """Report keys of {"": overall, task: ...}: `<name>_<split>`, then `<name>_<split>.<task>` per task."""
    return {f"{name}_{split}" + (f".{task}" if task else ""): value for task, value in figures.items()}


def attention_shape(config: dict) -> tuple[int, int]:
    """(num_heads, hidden_size) for ONNX Runtime's transformer optimizer, from a model's config.json: the
    head count and attention width (heads x head size) that every layer shares, or (0, 0), "read each
    layer's from the graph", when pruning left layers with different head counts or the config does not say.

    ORT reads a layer's head count from the constant in its query Reshape and uses these arguments only
    where the graph writes -1 there; one value then stands for every layer, which is right for a model whose
    layers all keep the same heads (`prune.uniform_heads`) and wrong for any other (docs/stages.md).
    """
    heads, width, layers = (config.get(k) for k in ("num_attention_heads", "hidden_size", "num_hidden_layers"))
    if not (heads and width and layers):
        return 0, 0
    pruned = {int(layer): cut for layer, cut in (config.get("pruned_heads") or {}).items()}
    kept = {heads - len(pruned.get(layer, [])) for layer in range(layers)}
    if len(kept) != 1:
        return 0, 0
    n_heads = kept.pop()
    return n_heads, n_heads * (width // heads)


def fuse_transformer(onnx_dir: Path, dst: Path, fuse_embeddings: bool = True) -> Path:
    """ONNX Runtime's transformer fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization,
    BiasGelu) of `onnx_dir/model.onnx`, written to the file `dst`. `fuse_embeddings=False` leaves the embedding
    lookups and their layer norm as they are, so that the word-embedding table stays a plain Gather that
    `quantize_word_embeddings` can store in 4 bits."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((onnx_dir / "config.json").read_text())
    model_type = config.get("model_type", "bert")
    if model_type not in FUSABLE_MODEL_TYPES:
        raise ValueError(f"no transformer fusions for model_type {model_type!r}")
    num_heads, hidden_size = attention_shape(config)
    options = FusionOptions("bert")
    options.enable_embed_layer_norm = fuse_embeddings
    fused = optimize_model(
        str(onnx_dir / ONNX_FILE),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=2,
        optimization_options=options,
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    fused.save_model_to_file(str(dst))
    return dst


# Values per 4-bit scale along an embedding row (GatherBlockQuantized takes powers of two from 16).
EMBEDDING_BLOCK = 32


def word_embedding_gather(model) -> str:
    """The name of the Gather that reads the word-embedding table: the largest two-dimensional initializer a
    Gather reads (position and token-type tables are far smaller than any vocabulary)."""
    tables = {t.name: t.dims[0] * t.dims[1] for t in model.graph.initializer if len(t.dims) == 2}
    gathers = [(tables[n.input[0]], n.name) for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]
    if not gathers:
        raise ValueError("no Gather reads a two-dimensional table: no word embeddings to quantize")
    return max(gathers)[1]


def quantize_word_embeddings(src: Path, dst: Path) -> Path:
    """`src` with its word-embedding table in 4 bits (ONNX Runtime's GatherBlockQuantized: symmetric, one fp32
    scale per EMBEDDING_BLOCK values of a row), every other node unchanged, written to `dst`. The table is most
    of a trimmed student's weights (13,052 x 384 of 8.0 M parameters in the default job) and a row is only read,
    never multiplied, so it is the cheapest place to halve bytes again after int8."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    model = onnx.load(str(src))
    word = word_embedding_gather(model)
    others = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name != word]
    config = DefaultWeightOnlyQuantConfig(
        block_size=EMBEDDING_BLOCK,
        is_symmetric=True,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )
    quantizer = MatMulNBitsQuantizer(
        model, algo_config=config, op_types_to_quantize=("Gather",), nodes_to_exclude=others
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def fuse_then_quantize(
    onnx_dir: Path, dst: Path, per_channel: bool, embedding_bits: int = 8, split_layer_norms: bool = True
) -> Path:
    """`fuse_transformer`, then dynamic int8 of the fused graph. Fewer, larger kernels matter most at batch 1.
    `embedding_bits=4`: the word embeddings in 4 bits (`quantize_word_embeddings`) instead of int8 inside the
    fused embedding layer norm, which ONNX Runtime has no 4-bit form of. `split_layer_norms`: the fused
    residual layer norms split back into adds and a layer norm (`split_skip_layer_norms`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused_path = fuse_transformer(onnx_dir, dst / "fused_fp32.onnx", fuse_embeddings=embedding_bits == 8)
    if embedding_bits == 4:
        quantize_word_embeddings(fused_path, fused_path)
    quantize_dynamic(
        str(fused_path),
        str(dst / ONNX_FILE),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        # fused ops are in the com.microsoft domain, which shape inference does not type
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    fused_path.unlink()
    if split_layer_norms:
        model = onnx.load(str(dst / ONNX_FILE))
        split_skip_layer_norms(model)
        onnx.save(model, str(dst / ONNX_FILE))
    return dst / ONNX_FILE


def split_skip_layer_norms(model) -> int:
    """Replace each SkipLayerNormalization that has a bias input (ONNX Runtime's fused residual add, bias add
    and layer norm) by Add(input, skip), Add(that, bias) and a plain LayerNormalization; returns how many.

    Why: in ONNX Runtime 1.32 on the CPU its SkipLayerNormalization kernel took about 2.2 ms of a 40 ms
    batch-32 call of the default student (30% of the time, six calls on a [32, ~50, 384] tensor), where Add
    and LayerNormalization take a fraction of that (docs/stages.md). The adds are in that order, input plus
    skip first, because ONNX Runtime's own SkipLayerNormFusion, which runs when a session loads the model,
    matches the bias added first (`Add(Add(x, bias), skip)`) or a bias-free `Add -> LayerNormalization`, and
    would put the slow kernel back. A node whose mean or inverse-deviation outputs are used is left as it is."""
    from onnx import helper

    consumed = {name for node in model.graph.node for name in node.input}
    graph_outputs = {o.name for o in model.graph.output}
    nodes, split = [], 0
    for node in model.graph.node:
        inputs = list(node.input) + [""] * (5 - len(node.input))
        outputs = list(node.output) + [""] * (4 - len(node.output))
        stats_used = any(o and (o in consumed or o in graph_outputs) for o in outputs[1:3])
        if node.op_type != "SkipLayerNormalization" or not inputs[4] or stats_used:
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = inputs[:5]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        summed, biased = f"{node.name}_residual", outputs[3] or f"{node.name}_residual_bias"
        nodes += [
            helper.make_node("Add", [x, skip], [summed], name=f"{node.name}_add_residual"),
            helper.make_node("Add", [summed, bias], [biased], name=f"{node.name}_add_bias"),
            helper.make_node(
                "LayerNormalization",
                [biased, gamma] + ([beta] if beta else []),
                [outputs[0]],
                name=f"{node.name}_layer_norm",
                axis=-1,
                epsilon=eps,
            ),
        ]
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return split


FUSABLE_MODEL_TYPES = ("bert", "roberta", "distilbert", "electra", "xlm-roberta")


def batch1_p50_ms(session, data, pad_id: int, sentences: int, warmup: int = 10) -> float:
    """Median batch-1 latency over the first `sentences` sentences (ms), after `warmup` untimed calls."""
    feeds = batch1_feeds(session, data, pad_id, sentences)
    if not feeds:
        return float("nan")
    times = time_calls(lambda feed: session.run(None, feed), feeds, min(warmup, len(feeds)), len(feeds))
    return latency_stats(times)["p50"]


def choose_candidate(
    fp32: dict, candidates: dict[str, dict], max_drop_points: float, tie_share: float = 0.0, keep: str | None = None
) -> tuple[str | None, dict]:
    """The fastest candidate no slower than fp32 and within `max_drop_points` of its validation accuracy; the
    eligible candidates within `tie_share` of the fastest one's batch-1 latency count as equally fast, and the
    smallest of them (by `size_bytes`) is chosen. `keep` (an incremental update: the variant the model it
    updates ships) is chosen whenever it is eligible, so that the deployed format does not change with a
    latency measured a few percent apart on a busy machine (its size would: 4-bit against 8-bit embeddings);
    when it is not eligible, the smallest eligible candidate is chosen, for the same reason.

    Returns (name or None, reasons): None means no int8 variant may ship, and the fp32 model ships instead.
    """
    reasons, eligible = {}, []
    for name, c in candidates.items():
        drop = 100.0 * (fp32["accuracy"] - c["accuracy"])
        if "error" in c:
            reasons[name] = f"failed: {c['error']}"
        elif drop > max_drop_points + 1e-9:
            reasons[name] = f"loses {drop:.2f} accuracy points (> {max_drop_points})"
        elif c["latency_ms"] > fp32["latency_ms"]:
            reasons[name] = f"slower than fp32 ({c['latency_ms']:.2f} > {fp32['latency_ms']:.2f} ms)"
        else:
            reasons[name] = "eligible"
            eligible.append((c["latency_ms"], name))
    if not eligible:
        return None, reasons
    if keep is not None and reasons.get(keep) == "eligible":
        reasons[keep] = "eligible; kept: the variant the updated model ships"
        return keep, reasons
    if keep is not None:
        # the update's model is gated on its size against the one it updates: every eligible variant counts as
        # tied (measured: the fastest one, with 8-bit embeddings, grew an update 1.43x and the size check
        # refused it)
        tied = [name for _, name in eligible]
    else:
        fastest = min(eligible)[0]
        tied = [name for latency, name in eligible if latency <= fastest * (1.0 + tie_share)]
    chosen = min(tied, key=lambda name: (candidates[name].get("size_bytes", 0), candidates[name]["latency_ms"]))
    if keep is not None:
        reasons[chosen] = f"eligible; the smallest (the updated model's {keep} is not eligible)"
    elif len(tied) > 1:
        reasons[chosen] = f"eligible; the smallest of {len(tied)} within {tie_share:.0%} of the fastest"
    return chosen, reasons


class ValidationReader:
    """ONNX Runtime calibration reader: one batch-1 feed per validation sentence."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def static_quantize(onnx_dir: Path, dst: Path, per_channel: bool, feeds: list[dict]) -> Path:
    """Static int8: weights and activations (MatMul inputs, the embedding Gathers) with scales fixed from
    MinMax calibration on validation sentences, so no quantization runs per call. ONNX Runtime's transformer
    fusions do not take QLinear ops, so this runs on the unfused export."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    dst.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(onnx_dir / ONNX_FILE),
        str(dst / ONNX_FILE),
        ValidationReader(feeds),
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=["MatMul", "Gather"],
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return dst / ONNX_FILE


def batch1_feeds(session, data, pad_id: int, sentences: int) -> list[dict]:
    names = {i.name for i in session.get_inputs()}
    return [
        {k: v.numpy() for k, v in collate(data.input_ids, np.array([i]), pad_id).items() if k in names}
        for i in range(min(sentences, len(data)))
    ]


def candidate_variants(cfg: QuantizeConfig) -> list[tuple[str, str, bool]]:
    """(label, method, per_channel) for every method in `cfg.candidates` times every `cfg.per_channel` setting."""
    return [
        (name + ("_per_channel" if per_channel else ""), name, per_channel)
        for name in cfg.candidates
        for per_channel in cfg.per_channel
    ]


def build_candidate(
    name: str,
    onnx_dir: Path,
    dst: Path,
    preset: str,
    per_channel: bool,
    calibration: list[dict],
    split_layer_norms: bool = True,
) -> Path:
    if name == "int8":
        return quantize_into(onnx_dir, dst, preset, per_channel)
    if name == "static_int8":
        return static_quantize(onnx_dir, dst, per_channel, calibration)
    bits = 4 if name == "fused_int8_emb4" else 8
    return fuse_then_quantize(onnx_dir, dst, per_channel, embedding_bits=bits, split_layer_norms=split_layer_norms)


def measure_candidates(
    cfg: QuantizeConfig,
    onnx_dir: Path,
    work: Path,
    preset: str,
    fp32_session,
    fp32_val: np.ndarray,
    val,
    pad_id: int,
    labels: Labelling,
    threads: int = 2,
) -> dict[str, dict]:
    """Build every variant of `candidate_variants(cfg)` under `work` and measure it on the validation split
    (`val`, on which the fp32 export gave `fp32_val`, scored as `labels` says): accuracy, agreement with fp32,
    batch-1 p50 latency (`threads` intra-op threads) and size. A variant that cannot be built is reported with
    its error, not fatal."""
    calibration = batch1_feeds(fp32_session, val, pad_id, cfg.calibration_sentences)
    measured: dict[str, dict] = {}
    for label, name, per_channel in candidate_variants(cfg):
        try:
            path = build_candidate(
                name, onnx_dir, work / label, preset, per_channel, calibration, cfg.split_layer_norms
            )
            session = load_onnx_session(path, threads)
            logits = onnx_logits(session, val, pad_id)
            measured[label] = {
                "accuracy": labels.score(logits, val.labels),
                "agreement": agreement(fp32_val, logits, list(task_blocks(labels).values())),
                "latency_ms": batch1_p50_ms(session, val, pad_id, cfg.latency_sentences),
                "size_bytes": path.stat().st_size,
            }
        except Exception as err:  # noqa: BLE001 - a candidate that cannot be built is reported, not fatal
            measured[label] = {"accuracy": float("nan"), "latency_ms": float("inf"), "error": str(err)[:300]}
    return measured


def against_fp32(shipped, splits: dict, pad_id: int, labels: Labelling) -> dict:
    """How far the shipped model strays from fp32 on each split of `splits` ({name: (encoded split, the fp32
    export's logits)}): agreement, both accuracies and the row count; for a multitask model also each task's
    (`agreement_test.<task>`, `accuracy_int8_test.<task>`, ...)."""
    report = {}
    for split, (data, fp32_logits) in splits.items():
        int8_logits = onnx_logits(shipped, data, pad_id)
        report |= named("agreement", split, agreements(fp32_logits, int8_logits, labels))
        report |= named("accuracy_fp32", split, by_task(labels.scores(fp32_logits, data.labels)))
        report |= named("accuracy_int8", split, by_task(labels.scores(int8_logits, data.labels)))
        report[f"n_{split}"] = len(data)
    return report


def run(
    cfg: QuantizeConfig,
    onnx_dir: Path,
    prepared: Path,
    out_dir: Path,
    tracker: Tracker,
    max_length: int = 64,
    threads: int = 2,
    keep: str | None = None,
) -> StageResult:
    """`threads`: the intra-op threads of every ONNX Runtime session here, the fp32 export's and each
    candidate's, timed and scored (the flows pass `evaluate.threads`). `keep`: a variant shipped whenever it
    is eligible (`choose_candidate`; an update passes the format of the model it updates)."""
    from transformers import AutoTokenizer

    onnx_dir, prepared, out_dir = Path(onnx_dir), Path(prepared), Path(out_dir)
    preset = resolve_preset(cfg.preset)
    tracker.log_params(
        {
            "preset": preset,
            "preset_requested": cfg.preset,
            "per_channel": ",".join(map(str, cfg.per_channel)),
            "candidates": ",".join(cfg.candidates),
            "threads": threads,
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    pad_id = pad_id_of(tokenizer)
    labels = model_labelling(onnx_dir, prepared)
    val = encode_split(prepared, "validation", tokenizer, labels, max_length)

    tmp = temp_sibling(out_dir)
    work = temp_sibling(out_dir.with_name(out_dir.name + "-candidates"))
    work.mkdir(parents=True)
    try:
        # decide: measure fp32 and every candidate on the validation split
        fp32_session = load_onnx_session(onnx_dir / ONNX_FILE, threads)
        fp32_val = onnx_logits(fp32_session, val, pad_id)
        fp32 = {
            "accuracy": labels.score(fp32_val, val.labels),
            "latency_ms": batch1_p50_ms(fp32_session, val, pad_id, cfg.latency_sentences),
        }
        measured = measure_candidates(cfg, onnx_dir, work, preset, fp32_session, fp32_val, val, pad_id, labels, threads)
        chosen, reasons = choose_candidate(
            fp32, measured, cfg.max_drop_vs_fp32_points, cfg.latency_tie_share, keep=keep
        )
        for name, m in measured.items():
            print(
                f"  quantize {name}: val acc {m['accuracy']:.4f} (fp32 {fp32['accuracy']:.4f}), "
                f"batch-1 p50 {m['latency_ms']:.2f} ms (fp32 {fp32['latency_ms']:.2f}): {reasons[name]}",
                flush=True,
            )

        # act: ship the chosen variant (or fp32 when none may ship) with the export's metadata
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / chosen / ONNX_FILE if chosen else onnx_dir / ONNX_FILE, tmp / ONNX_FILE)
        shutil.copy2(onnx_dir / "config.json", tmp / "config.json")
        copy_model_metadata(onnx_dir, tmp, tokenizer)
        report: dict = {
            "preset": preset,
            "per_channel": list(cfg.per_channel),
            "timing": {"threads": threads},  # intra-op threads of every latency above
            "chosen": chosen or "fp32",
            "fp32_validation": fp32,
            "candidates": measured,
            "decision": reasons,
        }
        shipped = load_onnx_session(tmp / ONNX_FILE, threads)
        test = encode_split(prepared, "test", tokenizer, labels, max_length)
        report |= against_fp32(
            shipped,
            {"test": (test, onnx_logits(fp32_session, test, pad_id)), "validation": (val, fp32_val)},
            pad_id,
            labels,
        )
        fp32_bytes, int8_bytes = dir_size_bytes(onnx_dir), dir_size_bytes(tmp)
        report |= {
            "size_fp32_bytes": fp32_bytes,
            "size_int8_bytes": int8_bytes,
            "size_ratio": fp32_bytes / int8_bytes,
        }  # > 1: int8 is that many times smaller
        (tmp / "quantize_report.json").write_text(json.dumps(report, indent=2))
        move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    metrics = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.log_metrics(metrics)
    tracker.log_artifact(out_dir / "quantize_report.json")
    return StageResult(metrics=metrics, outputs={"model": out_dir}, info={"preset": preset, "chosen": report["chosen"]})
