"""End to end, the multitask task: `miniaturize run --config configs/multitask.yaml` at smoke scale with a
tiny random BERT as the teacher, against a real Prefect server; then the per-task report beside the
single-task students, the ONNX model's output per task, the registered version's per-task figures, DVC,
an unchanged re-run, the bundle answering every task, and a user's file that lacks a task's column."""

from __future__ import annotations

import json
import subprocess

import onnx
import pytest

from tests.flows.conftest import BIN, make_project, run_cli

pytestmark = pytest.mark.e2e
CONFIG = ["--config", "configs/multitask.yaml"]
STAGES = [
    "ingest",
    "validate",
    "finetune",
    "distill",
    "prune",
    "trim",
    "export",
    "quantize",
    "singles",
    "seeds",
    "single_seeds",
    "evaluate",
    "register",
]
TASKS = ["sentiment", "subjectivity", "source"]


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory, prefect_api, tiny_model_dir):
    # no peak-memory probes (a fresh process per model): the classification and causal-LM runs measure them
    tiny = {
        "teacher.model": str(tiny_model_dir),
        "distill.layers": [1],
        "seeds.extra": [14],
        "evaluate.rss_sentences": 0,
    }
    project = make_project(tmp_path_factory.mktemp("mt") / "project", tiny, config="configs/multitask.yaml")
    return project, run_cli(["run", *CONFIG], project, prefect_api, timeout=900)


def test_multitask_smoke_run_completes_and_registers(mt_run):
    project, done = mt_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in STAGES:
        assert f"[{stage}] finished in" in done.stdout, stage
    assert "models:/miniaturize-multitask/1" in done.stdout
    for task in TASKS:
        assert f"  {task}: teacher accuracy" in done.stdout, task
    assert "against the single-task students together" in done.stdout


def test_multitask_report_sets_every_task_beside_the_single_task_students(mt_run):
    project, _ = mt_run
    report = json.loads((project / "reports" / "multitask" / "compression_report.json").read_text())
    assert report["task"] == "multitask-classification" and list(report["tasks"]) == TASKS
    for name in ("teacher", "onnx_fp32", "final", "baseline_teacher_int8", "single_tasks"):
        entry = report["models"][name]
        assert list(entry["tasks"]) == TASKS, name
        for scores in entry["tasks"].values():
            assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["f1_macro"] <= 1.0
        assert entry["size_bytes"] > 0 and entry["latency_ms"]["batch1_p50"] > 0
    singles = report["models"]["single_tasks"]
    assert singles["size_bytes"] == sum(m["size_bytes"] for m in report["single_task_models"].values())
    versus = report["final_vs_single_tasks"]
    assert versus["size_ratio"] == pytest.approx(singles["size_bytes"] / report["models"]["final"]["size_bytes"])
    assert {f"accuracy_drop_points.{t}" for t in TASKS} <= set(versus)
    assert "accuracy_drop_vs_single_task_points" in report["gate"]["checks"]
    # the seeds stage re-trained both chains with seed 14: each task's mean over two seeds, and the gate reads it
    assert [r["seed"] for r in report["seeds"]["runs"]] == [13, 14]
    assert all(report["seeds"]["tasks"][t]["drop_vs_single_task_points"]["n"] == 2 for t in TASKS)
    assert "accuracy_drop_points_seed_mean" in versus


def test_multitask_onnx_model_has_one_output_per_task(mt_run):
    project, _ = mt_run
    graph = onnx.load(str(project / "models" / "multitask" / "final" / "model.onnx"), load_external_data=False)
    assert [o.name for o in graph.graph.output] == [f"logits_{t}" for t in TASKS]


def test_multitask_version_records_every_tasks_figures_and_dvc_is_clean(mt_run, prefect_api):
    project, _ = mt_run
    from flows import tracking

    tags = tracking.client(project).get_model_version("miniaturize-multitask", "1").tags
    assert all(0.0 <= float(tags[f"final.accuracy.{t}"]) <= 1.0 for t in TASKS), tags
    assert all(f"final_vs_teacher.accuracy_drop_points.{t}" in tags for t in TASKS)
    stages = [f"multitask-{s}" for s in STAGES]
    status = subprocess.run([str(BIN / "dvc"), "status", *stages], cwd=project, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr


def test_multitask_unchanged_rerun_skips_every_stage(mt_run, prefect_api):
    project, _ = mt_run
    done = run_cli(["run", *CONFIG], project, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"unchanged, skipped: {', '.join(STAGES)} ({len(STAGES)} of {len(STAGES)} stages" in done.stdout


def test_multitask_bundle_answers_every_task_in_one_call(mt_run, prefect_api, tmp_path):
    project, _ = mt_run
    out = tmp_path / "edge"
    model = ["--model", "models:/miniaturize-multitask/1"]  # whatever its alias: the tiny teacher's gate is lax
    done = run_cli(["package", "--out", str(out), *model, *CONFIG], project, prefect_api)
    assert done.returncode == 0 and "bundle written" in done.stdout, done.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["task"] == "multitask"
    answered = subprocess.run(
        [str(BIN / "python"), str(out / "predict.py"), "a moving, funny film"], capture_output=True, text=True
    )
    assert answered.returncode == 0, answered.stderr[-2000:]
    assert set(json.loads(answered.stdout)["tasks"]) == set(TASKS)


def test_a_file_without_a_tasks_column_stops_before_training(mt_run, prefect_api):
    project, _ = mt_run
    data = project / "data" / "reviews.csv"
    data.write_text(
        "text,sentiment,subjectivity\n" + "".join(f"great film {i},positive,opinionated\n" for i in range(30))
    )
    done = run_cli(["run", *CONFIG, "--data", str(data)], project, prefect_api)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "source" in done.stderr and "column" in done.stderr, done.stderr[-2000:]
    assert "[finetune] started" not in done.stdout and "models:/" not in done.stdout
