"""End to end, the causal-lm task: `miniaturize run --config configs/causal-lm.yaml` at smoke scale (a tiny
GPT-2-style teacher trained from scratch on the built-in corpus) against a real Prefect server; then the
report, the registered version and its alias, DVC, lineage, and an unchanged re-run."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.flows.conftest import BIN, make_project, run_cli

pytestmark = pytest.mark.e2e
CONFIG = ["--config", "configs/causal-lm.yaml"]
STAGES = ["ingest", "validate", "finetune", "distill", "prune", "export", "quantize", "evaluate", "register"]
MODELS = [
    "teacher",
    "student",
    "student_without_teacher",
    "pruned",
    "onnx_fp32",
    "final",
    "teacher_onnx_fp32",
    "baseline_teacher_int8",
]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, prefect_api):
    project = make_project(tmp_path_factory.mktemp("lm") / "project")
    return project, run_cli(["run", *CONFIG], project, prefect_api)


def test_causal_lm_smoke_run_completes_and_registers_through_the_gate(lm_run):
    project, done = lm_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in STAGES:
        assert f"[{stage}] finished in" in done.stdout, stage
    assert "perplexity" in done.stdout and "tokens/s" in done.stdout
    assert "models:/miniaturize-causal-lm/1" in done.stdout and "@champion" in done.stdout
    registration = json.loads((project / "reports" / "causal-lm" / "registration.json").read_text())
    assert registration["version"] == "1" and registration["alias"] == "champion"


def test_causal_lm_report_has_the_promised_schema(lm_run):
    project, _ = lm_run
    report = json.loads((project / "reports" / "causal-lm" / "compression_report.json").read_text())
    assert report["task"] == "causal-lm" and len(report["dataset"]["sha256"]) == 64
    for name in MODELS:
        entry = report["models"][name]
        assert entry["perplexity"] > 1.0 and 0.0 <= entry["bleu"] <= 100.0
        assert name == "teacher" or 0.0 <= entry["bleu_vs_teacher"] <= 100.0
        assert entry["tokens_per_s"] > 0 and entry["size_bytes"] > 0 and entry["params"] > 0
        # not measured for memory: the intermediates, and the teacher's export (its PyTorch run is)
        intermediate = name in ("student", "student_without_teacher", "pruned", "teacher_onnx_fp32")
        assert entry["peak_rss_mb"] is None if intermediate else entry["peak_rss_mb"] > 0
    teacher, final = report["models"]["teacher"], report["models"]["final"]
    ratios = report["final_vs_teacher"]
    assert ratios["size_ratio"] == pytest.approx(teacher["size_bytes"] / final["size_bytes"])
    assert ratios["perplexity_ratio"] == pytest.approx(final["perplexity"] / teacher["perplexity"])
    assert ratios["bleu_drop_points"] == pytest.approx(teacher["bleu"] - final["bleu"])
    assert ratios["generation_speedup"] == pytest.approx(final["tokens_per_s"] / teacher["tokens_per_s"])
    assert report["models"]["pruned"]["params"] < report["models"]["student"]["params"] < teacher["params"]
    assert set(report["gate"]["checks"]) >= {"perplexity_ratio", "bleu_drop_points", "generation_speedup", "size_ratio"}
    assert report["ablation"] and "seeds" not in report["ablation"]  # no seeds.extra in this run
    # the teacher's validation curve, one entry per epoch it trained (the smoke profile's one)
    assert len(report["teacher_training"]["epochs"]) == 1 and report["teacher_training"]["best_epoch"] == 1
    # like for like: the same teacher in ONNX Runtime scores as in PyTorch; the baseline is its int8 variant
    ort, baseline = report["models"]["teacher_onnx_fp32"], report["models"]["baseline_teacher_int8"]
    assert ort["perplexity"] == pytest.approx(teacher["perplexity"], rel=1e-3) and ort["runtime"] == "onnxruntime fp32"
    assert baseline["runtime"] == "onnxruntime int8" and baseline["size_bytes"] < ort["size_bytes"]
    assert report["final_vs_baseline_teacher_int8"]["size_ratio"] == pytest.approx(
        baseline["size_bytes"] / final["size_bytes"]
    )


def test_causal_lm_outputs_are_recorded_by_dvc_and_traced_by_lineage(lm_run, prefect_api):
    project, _ = lm_run
    stages = [f"lm-{s}" for s in STAGES]
    status = subprocess.run([str(BIN / "dvc"), "status", *stages], cwd=project, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    chain = run_cli(["lineage", "1", "--json", *CONFIG], project, prefect_api)
    assert chain.returncode == 0, chain.stderr[-2000:]
    assert [row["stage"] for row in json.loads(chain.stdout)["stages"]] == STAGES


def test_causal_lm_unchanged_rerun_skips_every_stage(lm_run, prefect_api):
    project, _ = lm_run
    done = run_cli(["run", *CONFIG], project, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"unchanged, skipped: {', '.join(STAGES)} (9 of 9 stages" in done.stdout


def test_causal_lm_champion_packages_into_a_bundle_that_generates(lm_run, prefect_api, tmp_path):
    project, _ = lm_run
    out = tmp_path / "edge"
    done = run_cli(["package", "--out", str(out), *CONFIG], project, prefect_api)
    assert done.returncode == 0 and "bundle written" in done.stdout, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["task"] == "causal-lm" and manifest["source"]["model_uri"] == "models:/miniaturize-causal-lm@champion"
    )
    assert manifest["metrics"]["perplexity"] > 1.0
    generated = subprocess.run(
        [str(BIN / "python"), str(out / "predict.py"), "the movie was", "--max-new-tokens", "5"],
        capture_output=True,
        text=True,
    )
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr[-2000:]
