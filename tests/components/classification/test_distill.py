import pytest
from transformers import AutoModelForSequenceClassification

from components.classification import distill
from components.config import DistillConfig
from components.kit.modeling import count_params, transformer_layers
from components.kit.sources import ModelSourceError
from components.kit.tracking import NullTracker


def test_keep_layers_copies_the_chosen_blocks(tiny_model_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    second = transformer_layers(teacher)[1].attention.self.query.weight.clone()
    student = distill.keep_layers(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), [1])
    assert student.config.num_hidden_layers == 1 and len(transformer_layers(student)) == 1
    assert (transformer_layers(student)[0].attention.self.query.weight == second).all()
    assert count_params(student) < count_params(teacher)


def test_keep_layers_rejects_layers_the_teacher_lacks(tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with pytest.raises(ModelSourceError, match="teacher has 2 layers"):
        distill.keep_layers(model, [0, 2])


@pytest.mark.parametrize("features", [0.0, 1.0], ids=["logits", "hidden+attention"])
def test_distill_trains_and_saves_a_loadable_student(tiny_teacher_dir, tiny_prepared, tmp_path, features):
    cfg = DistillConfig(
        layers=[0],
        epochs=1,
        batch_size=8,
        max_length=32,
        lr=1e-3,
        ablation=False,
        hidden_weight=features,
        attention_weight=features,
    )
    result = distill.run(cfg, tiny_teacher_dir, tiny_prepared, tmp_path, NullTracker(), seed=0)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 1
    assert result.metrics["params"] == count_params(reloaded)
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0


def test_distill_adds_the_transfer_set_with_teacher_logits(tiny_model_dir, tiny_prepared, tmp_path):
    import json
    import shutil

    import numpy as np
    import pandas as pd

    from components.classification import finetune
    from components.config import TeacherConfig
    from tests.conftest import make_frame

    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, prepared)
    pd.DataFrame({"text": make_frame(5, 500)["text"]}).to_parquet(prepared / "transfer.parquet", index=False)
    teacher = tmp_path / "teacher"
    finetune.run(
        TeacherConfig(model=str(tiny_model_dir), epochs=1, batch_size=8, max_length=32),
        prepared,
        teacher,
        NullTracker(),
        seed=0,
    )
    stored = {
        json.loads((d / "inputs.json").read_text())["split"]: np.load(d / "logits.npy")
        for d in (teacher / "soft_targets").iterdir()
    }
    assert stored["transfer"].shape == (10, 2) and stored["train"].shape == (48, 2)

    logged = {}

    class Params(NullTracker):
        def log_params(self, params):
            logged.update(params)

    cfg = DistillConfig(layers=[0], epochs=1, batch_size=8, max_length=32)
    distill.run(cfg, teacher, prepared, tmp_path / "student", Params(), seed=0)
    assert logged["train_rows"] == 48 + 10
    distill.run(cfg.model_copy(update={"transfer": False}), teacher, prepared, tmp_path / "student2", Params(), seed=0)
    assert logged["train_rows"] == 48


def test_ablation_trains_the_same_student_without_the_teacher(tiny_teacher_dir, tiny_prepared, tmp_path):
    """No transfer set: the stage's student is the distilled-on-train one, so one more student suffices."""
    import json

    from components.classification.evaluate import distillation_ablation

    cfg = DistillConfig(layers=[0], epochs=1, batch_size=8, max_length=32, ablation=True)
    result = distill.run(cfg, tiny_teacher_dir, tiny_prepared, tmp_path, NullTracker(), seed=0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= saved["ablation.labels_only.test_accuracy"] <= 1.0
    assert "ablation.labels_only.test_accuracy" in result.metrics and saved["transfer_rows"] == 0
    assert not any(key.startswith("ablation.kd_train_only.") for key in saved)
    ablation = distillation_ablation(tmp_path)
    assert ablation["kd_train_only"] == saved["test_accuracy"] and ablation["kd_with_transfer"] is None
    assert ablation["kd_gain_points"] == pytest.approx(
        100 * (saved["test_accuracy"] - saved["ablation.labels_only.test_accuracy"])
    )


@pytest.fixture(scope="module")
def transfer_teacher(tiny_model_dir, tiny_prepared, tmp_path_factory):
    """tiny_prepared plus a 10-sentence transfer set, and a teacher fine-tuned on it (with its soft targets)."""
    import shutil

    import pandas as pd

    from components.classification import finetune
    from components.config import TeacherConfig
    from tests.conftest import make_frame

    root = tmp_path_factory.mktemp("transfer")
    prepared = root / "prepared"
    shutil.copytree(tiny_prepared, prepared)
    pd.DataFrame({"text": make_frame(5, 500)["text"]}).to_parquet(prepared / "transfer.parquet", index=False)
    finetune.run(
        TeacherConfig(model=str(tiny_model_dir), epochs=1, batch_size=8, max_length=32),
        prepared,
        root / "teacher",
        NullTracker(),
        seed=0,
    )
    return root / "teacher", prepared


def test_ablation_with_a_transfer_set_trains_three_students(transfer_teacher, tmp_path):
    """Labels only, distilled on the train split, distilled on train + transfer (the stage's own): each
    factor's gain is measured on its own, not both at once."""
    import json

    from components.classification.evaluate import distillation_ablation

    class Recording(NullTracker):
        def __init__(self):
            self.metrics = {}

        def log_metrics(self, metrics, step=None):
            self.metrics.update(metrics)

    teacher, prepared = transfer_teacher
    tracker = Recording()
    cfg = DistillConfig(layers=[0], epochs=1, batch_size=8, max_length=32, ablation=True)
    distill.run(cfg, teacher, prepared, tmp_path, tracker, seed=0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["transfer_rows"] == 10
    for student in ("labels_only", "kd_train_only"):
        assert 0.0 <= saved[f"ablation.{student}.test_accuracy"] <= 1.0
        assert any(key.startswith(f"ablation.{student}.") for key in tracker.metrics), student
    ablation = distillation_ablation(tmp_path)
    assert ablation["kd_with_transfer"] == saved["test_accuracy"]
    assert ablation["kd_train_only"] == saved["ablation.kd_train_only.test_accuracy"]
    assert ablation["transfer_gain_points"] == pytest.approx(
        100 * (saved["test_accuracy"] - saved["ablation.kd_train_only.test_accuracy"])
    )


def test_a_split_without_rows_has_no_accuracy(tiny_model_dir):
    """An accuracy of nothing is None, never 0."""
    import numpy as np

    from components.kit.labelling import SingleLabel
    from components.kit.modeling import Encoded
    from components.kit.soft_targets import StudentData

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    tokenizer = type("Tokenizer", (), {"pad_token_id": 0})()

    def data(test: Encoded) -> StudentData:
        return StudentData(tokenizer, SingleLabel(("negative", "positive")), {"test": test}, test, np.zeros((0, 2)))

    assert distill.test_scores(model, data(Encoded([], np.zeros(0, dtype=np.int64)))) == {"accuracy": None}
    assert 0.0 <= distill.test_scores(model, data(Encoded([[101, 102]], np.array([1]))))["accuracy"] <= 1.0


def test_feature_transfer_matches_span_ends_and_keeps_the_teacher_frozen(tiny_teacher_dir):
    import torch
    from transformers import AutoTokenizer

    from components.kit.modeling import collate

    load = dict(attn_implementation="eager")
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, **load)
    student = distill.keep_layers(AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, **load), [0])
    transfer = distill.FeatureTransfer(teacher, [0], student.config.hidden_size, 1.0, 1.0)
    assert transfer.ends == [2]  # the 1-layer student's block stands for teacher blocks 0 and 1
    assert list(transfer.parameters()) == []  # same widths: no projection, and no teacher weights

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    ids = [tok("a fine film")["input_ids"], tok("dull")["input_ids"]]
    batch = collate(ids, [0, 1], tok.pad_token_id)
    loss = transfer(student(**batch, output_hidden_states=True, output_attentions=True), batch)
    loss.backward()
    assert loss.item() > 0
    assert transformer_layers(student)[0].attention.self.query.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())

    narrow = distill.FeatureTransfer(teacher, [0], 16, 1.0, 0.0)
    assert isinstance(narrow.project, torch.nn.Linear) and narrow.project.out_features == teacher.config.hidden_size


@pytest.mark.parametrize(("points", "trained"), [(100.0, [[0]]), (-100.0, [[0], [0, 1]])], ids=["within", "over"])
def test_a_student_over_the_budget_is_replaced_by_a_deeper_one(
    tiny_teacher_dir, tiny_prepared, tmp_path, capsys, points, trained
):
    import json

    from components.kit.budget import AccuracyBudget

    # [0, 1, 2] asks for a layer the 2-layer teacher lacks: said, and not tried
    cfg = DistillConfig(
        layers=[0], deeper_layers=[[0, 1], [0, 1, 2]], epochs=1, batch_size=8, max_length=32, ablation=False
    )
    budget = AccuracyBudget(points=points, margin_points=0.25, confidence=0.95)
    m = distill.run(cfg, tiny_teacher_dir, tiny_prepared, tmp_path, NullTracker(), seed=0, budget=budget).metrics
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["layers"] for row in saved["tried"]] == trained and saved["layers"] == trained[-1]
    assert m["students_tried"] == len(trained) and m["layers_kept"] == len(trained[-1])
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path).config.num_hidden_layers == len(trained[-1])
    # every student but the last was judged (the last one has nothing deeper after it: prune judges it)
    judged = [row for row in saved["tried"] if "spent_points" in row]
    assert len(judged) == 1 and judged[0]["spent_bound_points"] >= judged[0]["spent_points"]
    assert judged[0]["within_budget"] == (points > 0)
    assert "need a teacher of 3+ layers" in capsys.readouterr().out


def test_deeper_students_must_each_keep_more_layers():
    with pytest.raises(ValueError, match="more layers than the one before"):
        DistillConfig(layers=[0, 2, 4], deeper_layers=[[0, 5]])
    with pytest.raises(ValueError, match="deeper_layers must be increasing"):
        DistillConfig(deeper_layers=[[3, 1, 2, 4]])
