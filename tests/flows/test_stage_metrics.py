"""The files DVC shows of a stage (flows/stage_metrics.py): what the metrics file, the per-epoch curves and
the report's model tables hold, that the recorder passes every call on, and that dvc.yaml declares exactly
the files written."""

from __future__ import annotations

import json
import math

import yaml

from components.kit.tracking import StageResult
from flows import dvc_yaml, stage_metrics
from flows.stage_metrics import Recorder, model_rows, numbers, pareto_front, split_series, uniform
from flows.stages import Axis
from flows.tasks import TASKS

CLASSIFICATION = TASKS["sequence-classification"]
AXES = (
    Axis("accuracy", "accuracy", higher_is_better=True),
    Axis("latency_ms.batch1_p50", "batch1_p50_ms", higher_is_better=False),
    Axis("size_bytes", "size_mb", higher_is_better=False, scale=1e-6),
)


class Calls:
    """A tracker that keeps its calls, and has the attributes an MLflow tracker has."""

    run_id = "run-1"

    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append(("metrics", dict(metrics), step))

    def log_params(self, params):
        self.calls.append(("params", dict(params)))


def test_numbers_keep_numbers_and_write_what_json_cannot_hold_as_null():
    assert numbers({"a": 1, "b": 0.5, "c": True, "d": "int8", "e": math.nan, "f": None}) == {
        "a": 1,
        "b": 0.5,
        "c": 1,
        "e": None,
    }


def test_a_tracker_prefix_names_the_model_an_epoch_belongs_to():
    assert split_series({"train_loss": 0.5, "step2.val_accuracy": 0.8, "ablation.labels_only.train_loss": 0.7}) == {
        "": {"train_loss": 0.5},
        "step2": {"val_accuracy": 0.8},
        "ablation.labels_only": {"train_loss": 0.7},
    }


def test_rows_get_the_same_keys_for_dvc():
    assert uniform([{"epoch": 1, "a": 1}, {"epoch": 2, "b": 2}]) == [
        {"epoch": 1, "a": 1, "b": None},
        {"epoch": 2, "a": None, "b": 2},
    ]


REPORT = {
    "models": {
        "teacher": {"accuracy": 0.90, "latency_ms": {"batch1_p50": 10.0}, "size_bytes": 90_000_000},
        "student": {"accuracy": 0.88, "latency_ms": {"batch1_p50": 5.0}, "size_bytes": 60_000_000},
        "worse": {"accuracy": 0.80, "latency_ms": {"batch1_p50": 6.0}, "size_bytes": 70_000_000},
        "final": {"accuracy": 0.87, "latency_ms": {"batch1_p50": 2.0}, "size_bytes": 15_000_000},
        "unmeasured": {"accuracy": 0.99, "latency_ms": {}, "size_bytes": 1_000},
    }
}


def test_model_rows_hold_each_axis_figure_scaled_and_none_where_missing():
    rows = {row["model"]: row for row in model_rows(REPORT, AXES)}
    assert rows["teacher"] == {"model": "teacher", "accuracy": 0.90, "batch1_p50_ms": 10.0, "size_mb": 90.0}
    assert rows["unmeasured"]["batch1_p50_ms"] is None


def test_the_pareto_front_keeps_the_models_none_beats_on_every_axis_fastest_first():
    front = pareto_front(model_rows(REPORT, AXES), AXES)
    # "worse" loses to student on all three; "unmeasured" has no latency, so it is on no front
    assert [row["model"] for row in front] == ["final", "student", "teacher"]


def test_the_recorder_passes_every_call_on_and_keeps_figures_and_epochs():
    inner = Calls()
    recorder = Recorder(inner)
    recorder.log_params({"lr": 0.1})
    recorder.log_metrics({"train_loss": 0.6, "val_accuracy": 0.7}, step=1)
    recorder.log_metrics({"step2.train_loss": 0.4}, step=1)
    recorder.log_metrics({"test_accuracy": 0.8})
    assert inner.calls == [
        ("params", {"lr": 0.1}),
        ("metrics", {"train_loss": 0.6, "val_accuracy": 0.7}, 1),
        ("metrics", {"step2.train_loss": 0.4}, 1),
        ("metrics", {"test_accuracy": 0.8}, None),
    ]
    assert recorder.run_id == "run-1"  # what the register stage reads of its tracker
    assert recorder.figures == {"test_accuracy": 0.8}
    assert recorder.epochs == {
        "": [{"epoch": 1, "train_loss": 0.6, "val_accuracy": 0.7}],
        "step2": [{"epoch": 1, "train_loss": 0.4}],
    }


def test_a_training_stage_writes_its_metrics_and_one_curve_file_per_model(tmp_path):
    ws = CLASSIFICATION.workspace(tmp_path)

    def stage(tracker):
        ws.student.mkdir(parents=True)  # its declared output
        for epoch in (1, 2):
            tracker.log_metrics({"train_loss": 1.0 / epoch, "val_accuracy": 0.5 + epoch / 10}, step=epoch)
            tracker.log_metrics({"ablation.labels_only.train_loss": 2.0 / epoch}, step=epoch)
        tracker.log_metrics({"test_accuracy": 0.75})
        return StageResult(metrics={"test_accuracy": 0.8, "best_epoch": 2, "chosen": "int8"})

    stage_metrics.recorded(CLASSIFICATION, "distill", ws, Calls(), stage)
    metrics = json.loads((tmp_path / "reports/metrics/distill.json").read_text())
    assert metrics == {"test_accuracy": 0.8, "best_epoch": 2}  # the result's figure wins over the logged one
    curves = tmp_path / "reports/curves/distill"
    assert sorted(p.name for p in curves.iterdir()) == ["ablation.labels_only.json", "distill.json"]
    assert json.loads((curves / "distill.json").read_text()) == [
        {"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.6},
        {"epoch": 2, "train_loss": 0.5, "val_accuracy": 0.7},
    ]


def test_the_report_stage_writes_the_model_tables(tmp_path):
    ws = CLASSIFICATION.workspace(tmp_path)
    ws.report.parent.mkdir(parents=True)
    ws.report.write_text(json.dumps(REPORT))
    for path in (ws.report_md, ws.report_plot):
        path.write_text("")
    stage_metrics.recorded(CLASSIFICATION, "evaluate", ws, Calls(), lambda tracker: StageResult())
    models, front = (json.loads(path.read_text()) for path in stage_metrics.model_tables(ws))
    assert [row["model"] for row in models] == list(REPORT["models"])
    assert [row["model"] for row in front] == ["final", "student", "teacher"]
    assert json.loads((tmp_path / "reports/metrics/evaluate.json").read_text()) == {}
    assert not (tmp_path / "reports/curves").exists()  # evaluate trains nothing


def test_a_stage_that_did_not_write_its_outputs_gets_no_files(tmp_path):
    """The runner fails it (`StageOutputMissing`): no metrics file may say it finished."""
    ws = CLASSIFICATION.workspace(tmp_path)
    stage_metrics.recorded(CLASSIFICATION, "validate", ws, Calls(), lambda tracker: StageResult(metrics={"a": 1}))
    assert not (tmp_path / "reports").exists()


def test_dvc_yaml_declares_the_files_written_and_plots_only_declared_outputs():
    """What the stage cache checks (`paths`) is what dvc.yaml declares of the stage (its metrics file, its plot
    data as outs), and every plot draws files some stage writes."""
    generated = yaml.safe_load(dvc_yaml.render())
    outs = set()
    for task in TASKS.values():
        ws = task.workspace(dvc_yaml.ROOT)
        for name in task.stages:
            stage = generated["stages"][task.dvc_prefix + name]
            assert stage["metrics"] == [dvc_yaml.relative(ws, stage_metrics.metrics_file(ws, name))]
            assert set(stage_metrics.plot_paths(task, name, ws)) <= set(stage["outs"]), name
            outs |= set(stage["outs"])
    for plot in generated["plots"]:
        plot_id, props = (plot, {}) if isinstance(plot, str) else next(iter(plot.items()))
        files = props["y"] if isinstance(props.get("y"), dict) else [plot_id]
        assert set(files) <= outs, plot_id
