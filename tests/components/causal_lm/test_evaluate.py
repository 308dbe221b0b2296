import json
import math

import pytest

from components.causal_lm import HISTORY_FILE, SEEDS_FILE, evaluate, export
from components.config import LMEvaluateConfig, LMGateConfig
from components.kit.gate import compare_lm_to_champion, compare_lm_to_teacher, decide_lm
from components.kit.report import ModelSpec
from components.kit.tracking import NullTracker

TINY = LMEvaluateConfig(
    prefix_tokens=4,
    continuation_tokens=8,
    bleu_sentences=16,
    generation_tokens=8,
    generation_prompts=4,
    rounds=2,
    rss_prompts=2,
    threads=1,
)
ENTRY_KEYS = {
    "runtime",
    "perplexity",
    "bleu",
    "bleu_sentences",
    "tokens_per_s",
    "tokens_per_s_spread",
    "tokens_per_s_rounds",
    "size_bytes",
    "params",
    "peak_rss_mb",
}
LM_RATIO_KEYS = ("size_ratio", "perplexity_ratio", "bleu_drop_points", "generation_speedup")  # compare_lm_to_teacher's


class RecordingTracker(NullTracker):
    def __init__(self):
        self.metrics, self.artifacts, self.params = {}, [], {}

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(path)

    def log_params(self, params):
        self.params.update(params)


@pytest.fixture(scope="module")
def lm_models(tiny_gpt2_dir, tiny_lm_data_dir, tmp_path_factory):
    """The tiny GPT-2 exported, quantized, and an untrained copy standing in for the ablation student."""
    import torch
    from transformers import GPT2LMHeadModel

    root = tmp_path_factory.mktemp("lm_models")
    onnx = export.export(
        tiny_gpt2_dir, tiny_lm_data_dir, root / "onnx", NullTracker(), prompts=2, max_new_tokens=4
    ).outputs["model"]
    int8 = export.quantize(onnx, tiny_lm_data_dir, root / "int8", NullTracker(), prompts=2, max_new_tokens=4).outputs[
        "model"
    ]
    torch.manual_seed(1)
    untrained = GPT2LMHeadModel(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).config)
    untrained.save_pretrained(root / "untrained")
    return {"onnx_fp32": onnx, "final": int8, "untrained": root / "untrained"}


@pytest.fixture(scope="module")
def evaluated(lm_models, tiny_gpt2_dir, tiny_lm_data_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("lm_evaluate") / "reports"
    tracker = RecordingTracker()
    # "student" is the teacher's own weights exported (so runtimes can be compared); the untrained
    # ablation folder has no tokenizer of its own (the data folder's is used)
    models = [
        ModelSpec("student", lm_models["onnx_fp32"], "onnxruntime"),
        ModelSpec("teacher", tiny_gpt2_dir, "pytorch"),
        ModelSpec("student_without_teacher", lm_models["untrained"], "pytorch", memory=False),
        ModelSpec("final", lm_models["final"], "onnxruntime"),
        # the like-for-like references: here the same exported and quantized weights as student and final
        ModelSpec("teacher_onnx_fp32", lm_models["onnx_fp32"], "onnxruntime", memory=False),
        ModelSpec("baseline_teacher_int8", lm_models["final"], "onnxruntime", memory=False),
    ]
    result = evaluate.run(TINY, LMGateConfig(), tiny_lm_data_dir, models, out_dir, tracker, seed=13, max_length=32)
    return result, out_dir, tracker


def test_report_has_every_key_with_sane_values(evaluated):
    result, out_dir, tracker = evaluated
    report = json.loads((out_dir / "compression_report.json").read_text())
    assert set(report) >= {"task", "dataset", "models", "final_vs_teacher", "gate", "ablation", "environment"}
    assert report["task"] == "causal-lm"
    assert len(report["dataset"]["sha256"]) == 64 and report["dataset"]["rows"] == {
        "train": 200,
        "validation": 24,
        "test": 24,
    }
    assert list(report["models"]) == [
        "student",
        "teacher",
        "student_without_teacher",
        "final",
        "teacher_onnx_fp32",
        "baseline_teacher_int8",
    ]
    for name, entry in report["models"].items():
        assert set(entry) >= ENTRY_KEYS, name
        assert entry["perplexity"] > 1
        assert 0 <= entry["bleu"] <= 100 and (name == "teacher" or 0 <= entry["bleu_vs_teacher"] <= 100)
        assert entry["tokens_per_s"] > 0 and entry["size_bytes"] > 0 and entry["params"] > 0
        # timed in TINY.rounds alternating rounds: the figure is the median of the rounds' figures
        rounds = entry["tokens_per_s_rounds"]
        assert len(rounds) == TINY.rounds and min(rounds) <= entry["tokens_per_s"] <= max(rounds)
        assert entry["tokens_per_s_spread"] == pytest.approx(max(rounds) - min(rounds))
        assert entry["bleu_sentences"] == 16
        # an intermediate is not measured for memory (a fresh process each costs seconds)
        unmeasured = ("student_without_teacher", "teacher_onnx_fp32", "baseline_teacher_int8")
        assert entry["peak_rss_mb"] is None if name in unmeasured else entry["peak_rss_mb"] > 0
    models = report["models"]
    assert models["teacher"]["runtime"] == "pytorch fp32" and models["final"]["runtime"] == "onnxruntime int8"
    assert models["student"]["runtime"] == "onnxruntime fp32"
    # the same weights give the same perplexity and continuations in either runtime
    assert models["student"]["perplexity"] == pytest.approx(models["teacher"]["perplexity"], rel=1e-4)
    assert models["student"]["bleu_vs_teacher"] == pytest.approx(100.0)
    assert models["student"]["bleu"] == pytest.approx(models["teacher"]["bleu"])
    # the trained fixture model beats an untrained one
    assert models["teacher"]["perplexity"] < models["student_without_teacher"]["perplexity"]
    assert models["final"]["size_bytes"] < models["student"]["size_bytes"]


def test_ratios_gate_and_ablation_follow_the_entries(evaluated):
    result, out_dir, tracker = evaluated
    report = json.loads((out_dir / "compression_report.json").read_text())
    teacher, final = report["models"]["teacher"], report["models"]["final"]
    ratios = report["final_vs_teacher"]
    assert set(ratios) == set(LM_RATIO_KEYS)
    assert ratios["size_ratio"] == pytest.approx(teacher["size_bytes"] / final["size_bytes"])
    assert ratios["perplexity_ratio"] == pytest.approx(final["perplexity"] / teacher["perplexity"])
    assert ratios["bleu_drop_points"] == pytest.approx(teacher["bleu"] - final["bleu"])
    assert ratios["generation_speedup"] == pytest.approx(final["tokens_per_s"] / teacher["tokens_per_s"])
    assert report["gate"] == decide_lm(ratios, LMGateConfig()).as_dict()
    assert set(report["gate"]["checks"]) == set(LM_RATIO_KEYS)
    ablation = report["ablation"]
    assert ablation["student_perplexity"] == report["models"]["student"]["perplexity"]
    assert ablation["student_without_teacher_bleu"] == report["models"]["student_without_teacher"]["bleu"]
    assert ablation["distillation_perplexity_ratio"] < 1 and ablation["distillation_bleu_gain_points"] >= 0
    assert result.metrics["gate_passed"] == float(report["gate"]["passed"])
    assert tracker.metrics["final.tokens_per_s"] == pytest.approx(final["tokens_per_s"])
    assert tracker.metrics["final_vs_teacher.size_ratio"] == pytest.approx(ratios["size_ratio"])
    assert {p.name for p in tracker.artifacts} == {"compression_report.json", "compression_report.md"}
    markdown = (out_dir / "compression_report.md").read_text()
    for text in ("| final | onnxruntime int8 |", "## Gate:", "## final vs teacher", "## Ablation", "in 2 rounds"):
        assert text in markdown
    assert f"| {final['tokens_per_s']:.1f} ({final['tokens_per_s_spread']:.1f}) |" in markdown
    assert report["environment"]["generation_rounds"] == TINY.rounds
    assert tracker.metrics["final.tokens_per_s_spread"] == pytest.approx(final["tokens_per_s_spread"])


def test_final_is_also_compared_with_the_teacher_in_onnx_runtime_and_the_quantize_only_baseline(evaluated):
    result, out_dir, tracker = evaluated
    report = json.loads((out_dir / "compression_report.json").read_text())
    models, baseline = report["models"], report["final_vs_baseline_teacher_int8"]
    assert set(baseline) == set(LM_RATIO_KEYS) == set(report["final_vs_teacher_onnx_fp32"])
    assert baseline["size_ratio"] == pytest.approx(1.0) and baseline["perplexity_ratio"] == pytest.approx(1.0)
    ort = report["final_vs_teacher_onnx_fp32"]
    assert ort["size_ratio"] == pytest.approx(models["teacher_onnx_fp32"]["size_bytes"] / models["final"]["size_bytes"])
    assert ort["generation_speedup"] == pytest.approx(
        models["final"]["tokens_per_s"] / models["teacher_onnx_fp32"]["tokens_per_s"]
    )
    markdown = (out_dir / "compression_report.md").read_text()
    assert "final vs teacher_onnx_fp32" in markdown and "final vs baseline_teacher_int8" in markdown
    logged = evaluate.metrics_to_log(report)
    assert logged["final_vs_baseline_teacher_int8.size_ratio"] == pytest.approx(1.0)


def test_evaluate_needs_teacher_and_final(tiny_lm_data_dir, tiny_gpt2_dir, tmp_path):
    with pytest.raises(ValueError, match="'final'"):
        evaluate.run(
            TINY,
            LMGateConfig(),
            tiny_lm_data_dir,
            [ModelSpec("teacher", tiny_gpt2_dir, "pytorch")],
            tmp_path,
            NullTracker(),
            seed=13,
            max_length=32,
        )


def test_perplexity_helpers():
    assert evaluate.nll_to_perplexity(0.0, 5) == 1.0
    assert evaluate.nll_to_perplexity(2 * math.log(4), 2) == pytest.approx(4.0)
    assert math.isnan(evaluate.nll_to_perplexity(0.0, 0))
    assert evaluate.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)
    assert math.isnan(evaluate.corpus_bleu([], []))


# ---------------------------------------------------------------- the causal-lm gate, with hand-made numbers

TEACHER = {"size_bytes": 40e6, "perplexity": 20.0, "bleu": 10.0, "tokens_per_s": 50.0}
GOOD_FINAL = {"size_bytes": 8e6, "perplexity": 22.0, "bleu": 9.5, "tokens_per_s": 250.0}


def test_compare_lm_to_teacher():
    ratios = compare_lm_to_teacher(TEACHER, GOOD_FINAL)
    assert ratios == pytest.approx(
        {"size_ratio": 5.0, "perplexity_ratio": 1.1, "bleu_drop_points": 0.5, "generation_speedup": 5.0}
    )
    missing = compare_lm_to_teacher(TEACHER, {"size_bytes": 0, "perplexity": None})
    assert math.isinf(missing["size_ratio"]) and math.isnan(missing["perplexity_ratio"])
    assert math.isnan(missing["bleu_drop_points"]) and math.isnan(missing["generation_speedup"])


def test_decide_lm_passes_and_fails_each_check():
    cfg = LMGateConfig()
    assert decide_lm(compare_lm_to_teacher(TEACHER, GOOD_FINAL), cfg).passed
    at_thresholds = {"perplexity_ratio": 1.25, "bleu_drop_points": 1.0, "generation_speedup": 4.0, "size_ratio": 4.0}
    assert decide_lm(at_thresholds, cfg).passed
    for key, bad in (
        ("perplexity_ratio", 1.3),
        ("bleu_drop_points", 1.5),
        ("generation_speedup", 3.9),
        ("size_ratio", 3.0),
    ):
        decision = decide_lm(at_thresholds | {key: bad}, cfg)
        assert not decision.passed and decision.failed() == [key]
    for key in at_thresholds:
        for value in (math.nan, math.inf, -math.inf, None):
            decision = decide_lm(at_thresholds | {key: value}, cfg)
            assert not decision.passed and decision.failed() == [key], (key, value)
        assert decide_lm({k: v for k, v in at_thresholds.items() if k != key}, cfg).failed() == [key]


def test_compare_lm_to_champion():
    cfg = LMGateConfig()
    same = {"data_sha256": "ab" * 32, "split": "test"}  # both figures from the same data and split
    champion = {"perplexity": 20.0, "size_bytes": 10e6, **same}
    assert compare_lm_to_champion({"perplexity": 21.0, "size_bytes": 11e6, **same}, champion, cfg).passed  # 1.05, 1.10
    worse = compare_lm_to_champion({"perplexity": 21.2, "size_bytes": 10e6, **same}, champion, cfg)
    assert worse.failed() == ["vs_champion.perplexity_growth"]
    assert worse.checks["vs_champion.perplexity_growth"].value == pytest.approx(1.06)
    larger = compare_lm_to_champion({"perplexity": 19.0, "size_bytes": 12e6, **same}, champion, cfg)
    assert larger.failed() == ["vs_champion.size_growth"]
    for bad in (
        {"perplexity": math.nan, "size_bytes": 10e6},
        {"perplexity": math.inf, "size_bytes": 10e6},
        {"size_bytes": 10e6},
    ):
        assert compare_lm_to_champion(bad | same, champion, cfg).failed() == ["vs_champion.perplexity_growth"]
    zero_champion = compare_lm_to_champion(
        {"perplexity": 20.0, "size_bytes": 1.0, **same}, {"perplexity": 0.0, "size_bytes": 0.0, **same}, cfg
    )
    assert zero_champion.failed() == ["vs_champion.perplexity_growth", "vs_champion.size_growth"]


def test_the_teacher_has_no_bleu_against_itself(evaluated):
    """Its BLEU against its own continuations would be the literal 100: left out, shown as "-"."""
    result, out_dir, tracker = evaluated
    report = json.loads((out_dir / "compression_report.json").read_text())
    assert "bleu_vs_teacher" not in report["models"]["teacher"]
    assert "teacher.bleu_vs_teacher" not in tracker.metrics and "final.bleu_vs_teacher" in tracker.metrics
    markdown = (out_dir / "compression_report.md").read_text()
    teacher_row = next(line for line in markdown.splitlines() if line.startswith("| teacher |"))
    assert teacher_row.split("|")[5].strip() == "-"
    final_row = next(line for line in markdown.splitlines() if line.startswith("| final |"))
    assert final_row.split("|")[5].strip() == f"{report['models']['final']['bleu_vs_teacher']:.2f}"


def test_split_perplexity_of_an_onnx_decoder_matches_the_report(evaluated, lm_models, tiny_lm_data_dir):
    """How the gate re-measures a causal-lm champion on a candidate's data: the report's own figure."""
    result, out_dir, tracker = evaluated
    report = json.loads((out_dir / "compression_report.json").read_text())
    measured = evaluate.split_perplexity(lm_models["final"], tiny_lm_data_dir, "test", TINY.threads, 32)
    assert measured == pytest.approx(report["models"]["final"]["perplexity"], rel=1e-6)


def test_the_report_shows_the_teacher_curve_and_the_seeds_comparison(evaluated, tmp_path):
    _, out_dir, _ = evaluated
    report = json.loads((out_dir / "compression_report.json").read_text())
    assert report["teacher_training"] is None and "seeds" not in report["ablation"]  # no records beside the models
    curve = {
        "untrained_val_perplexity": 8000.0,
        "best_epoch": 2,
        "max_epochs": 12,
        "patience": 1,
        "epochs": [
            {"train_loss": 6.1, "val_perplexity": 300.0, "epoch_seconds": 60.0},
            {"train_loss": 5.2, "val_perplexity": 210.5, "epoch_seconds": 61.0},
            {"train_loss": 4.9, "val_perplexity": 215.0, "epoch_seconds": 59.0},
        ],
    }
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / HISTORY_FILE).write_text(json.dumps(curve))
    seeds = {
        "seeds": [
            {"seed": 13, "student_test_perplexity": 250.0, "student_without_teacher_test_perplexity": 260.0},
            {"seed": 14, "student_test_perplexity": 252.0, "student_without_teacher_test_perplexity": 251.0},
        ],
        "student_test_perplexity_mean": 251.0,
        "student_without_teacher_test_perplexity_mean": 255.5,
        "student_test_perplexity_std": 1.0,
        "student_without_teacher_test_perplexity_std": 4.5,
        "distillation_wins": 1.0,
    }
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / SEEDS_FILE).write_text(json.dumps(seeds))
    report["teacher_training"] = evaluate.read_json_beside(tmp_path / "teacher", HISTORY_FILE)
    report["ablation"] = evaluate.ablation_summary(
        report["models"], evaluate.read_json_beside(tmp_path / "ablation", SEEDS_FILE)
    )
    assert (
        evaluate.read_json_beside(tmp_path, SEEDS_FILE) is None and evaluate.read_json_beside(None, SEEDS_FILE) is None
    )
    markdown = evaluate.render_markdown(report)
    assert "## The teacher's validation curve" in markdown and "| 2 | 5.200 | 210.50 | 61 |" in markdown
    assert "stopping after 1 epoch(s) without a lower one; epoch 2 kept" in markdown
    assert "test perplexity distilled 251.00 (std 1.00) against 255.50 (std 4.50)" in markdown
    assert "lower on 1 of 2 seeds" in markdown and "| 14 | 252.00 | 251.00 |" in markdown
    logged = evaluate.metrics_to_log(report)
    assert logged["ablation.seeds.student_test_perplexity_mean"] == 251.0
    assert logged["teacher_training.epochs_run"] == 3.0


def test_round_rates_are_the_median_over_rounds_of_each_rounds_median_generation():
    # 32 tokens in 10 ms is 3,200 tokens/s; a slow generation in round 2 moves its median, not the others'
    rates = evaluate.round_rates([[10.0, 10.0, 12.0], [20.0, 40.0, 20.0], [16.0, 16.0]], new_tokens=32)
    assert rates["tokens_per_s_rounds"] == pytest.approx([3200.0, 1600.0, 2000.0])
    assert rates["tokens_per_s"] == pytest.approx(2000.0)
    assert rates["tokens_per_s_spread"] == pytest.approx(1600.0)
    empty = evaluate.round_rates([], new_tokens=32)
    assert math.isnan(empty["tokens_per_s"]) and empty["tokens_per_s_rounds"] == []


def test_time_generation_alternates_the_models_and_cycles_their_prompts():
    calls = []

    def model(name):
        return lambda prompt: calls.append((name, prompt[0]))

    cfg = TINY.model_copy(update={"generation_prompts": 4, "rounds": 2})
    rates = evaluate.time_generation({"a": model("a"), "b": model("b")}, {"a": [[1], [2], [3]], "b": [[9]]}, cfg)
    assert set(rates) == {"a", "b"} and all(len(r["tokens_per_s_rounds"]) == 2 for r in rates.values())
    # one warm-up each, then round 1 in the given order and round 2 rotated, two generations a turn
    assert [name for name, _ in calls] == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a"]
    assert [p for name, p in calls if name == "a"] == [1, 2, 3, 1, 2]
    with pytest.raises(ValueError, match="no prompts"):
        evaluate.time_generation({"a": model("a")}, {"a": []}, cfg)
