import json

import numpy as np
from transformers import AutoModelForSequenceClassification

from components.classification import prune
from components.config import PruneConfig
from components.kit.modeling import count_params, transformer_layers
from components.kit.tracking import NullTracker


def test_step_targets_reach_the_ratios_in_equal_steps():
    assert prune.step_targets(36, 1536, 0.4, 0.4, 2) == [(7, 1229), (14, 922)]
    assert prune.step_targets(8, 64, 0.5, 0.0, 1) == [(4, 64)]
    # every layer losing the same number: head totals at multiples of the layer count (7 -> 6, 14 -> 15)
    assert prune.step_targets(36, 1536, 0.4, 0.4, 2, head_multiple=3) == [(6, 1229), (15, 922)]


def test_original_head_ids_skip_heads_already_pruned(tiny_teacher_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    model.prune_heads({0: [1]})
    # layer 0 now holds original heads 0, 2, 3: its current position 1 is original head 2
    assert prune.original_head_ids(model, {0: [1], 1: [1]}) == {0: [2], 1: [1]}


def test_importance_scores_shapes_and_signal(tiny_teacher_dir, tiny_prepared):
    from transformers import AutoTokenizer

    from components.kit import soft_targets
    from components.kit.labelling import SingleLabel
    from components.kit.modeling import load_encoded_splits

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    data = load_encoded_splits(tiny_prepared, tok, SingleLabel(("negative", "positive")), 32, names=("train",))
    logits = soft_targets.load(tiny_teacher_dir, tiny_prepared, "train", data["train"], max_length=32)
    heads, ffn = prune.importance_scores(
        model, data["train"], logits, tok.pad_token_id, batches=2, batch_size=8, alpha=0.5, temperature=2.0, seed=0
    )
    assert [h.shape for h in heads] == [(4,), (4,)] and [f.shape for f in ffn] == [(64,), (64,)]
    assert all(np.isfinite(h).all() and h.sum() > 0 for h in heads + ffn)


def test_prune_physically_removes_heads_and_neurons(tiny_teacher_dir, tiny_prepared, tmp_path):
    before = count_params(AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir))
    cfg = PruneConfig(head_ratio=0.5, ffn_ratio=0.5, importance_batches=2, epochs=1, batch_size=8, max_length=32)
    result = prune.run(cfg, tiny_teacher_dir, tiny_teacher_dir, tiny_prepared, tmp_path, NullTracker(), seed=0)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert count_params(reloaded) == result.metrics["params_after"] < before
    assert sum(layer.attention.self.num_attention_heads for layer in transformer_layers(reloaded)) == 4
    assert reloaded.config.intermediate_size == 32
    assert transformer_layers(reloaded)[0].intermediate.dense.out_features == 32
    # two steps (the default): half the cut each, re-scored and recovered in between
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [(h["heads"], h["intermediate_size"]) for h in history] == [(6, 48), (4, 32)]


def test_uniform_heads_leave_every_layer_the_same_head_count(tiny_teacher_dir, tiny_prepared, tmp_path):
    cfg = PruneConfig(
        head_ratio=0.5, uniform_heads=True, ffn_ratio=0.0, importance_batches=2, epochs=1, batch_size=8, max_length=32
    )
    prune.run(cfg, tiny_teacher_dir, tiny_teacher_dir, tiny_prepared, tmp_path, NullTracker(), seed=0)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert [layer.attention.self.num_attention_heads for layer in transformer_layers(reloaded)] == [2, 2]
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["heads"] for h in history] == [6, 4]  # one head from each layer per step
