"""Growing a pruned student by one of its teacher's layers: which layer, where it goes, what it keeps, and
that the grown folder loads and runs like any student."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.classification.distill import keep_layers
from components.kit import grow
from components.kit.encoder_pruning import prune_ffn
from components.kit.modeling import encode, predict_logits, transformer_layers
from tests.conftest import make_frame, tiny_bert


def test_next_layers_adds_the_first_missing_layer_of_the_first_deeper_set():
    assert grow.next_layers([0, 2, 4], [[0, 2, 3, 5]], depth=6) == [0, 2, 3, 4]
    # a set no longer than the student is passed over; the next one is read
    assert grow.next_layers([0, 2, 3, 4], [[0, 2, 3, 5], [0, 1, 2, 3, 5]], depth=6) == [0, 1, 2, 3, 4]
    assert grow.next_layers([0, 2, 3, 4], [[0, 2, 3, 5]], depth=6) is None
    # layers the teacher does not have are not added
    assert grow.next_layers([0, 1], [[0, 1, 5, 2]], depth=3) == [0, 1, 2]
    assert grow.next_layers([0, 1], [[0, 1, 5]], depth=3) is None


def test_teacher_layers_are_read_from_the_record_or_the_default(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 3}))
    assert grow.teacher_layers(tmp_path) is None
    assert grow.teacher_layers(tmp_path, [0, 2, 4]) == [0, 2, 4]
    assert grow.teacher_layers(tmp_path, [0, 2]) is None  # not this student's depth
    grow.record_teacher_layers(tmp_path, [0, 3, 5])
    assert grow.teacher_layers(tmp_path, [0, 2, 4]) == [0, 3, 5]


@pytest.fixture(scope="module")
def pruned_student(tmp_path_factory):
    """A 4-layer tiny teacher and a student of its layers [0, 2]: the second block lost head 1, both FFNs cut
    from 64 to 16 neurons."""
    root = tmp_path_factory.mktemp("grow")
    teacher_dir = tiny_bert(root / "teacher", layers=4)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    keep_layers(model, [0, 2])
    model.prune_heads({1: [1]})
    prune_ffn(model, [np.arange(0, 64, 4), np.arange(1, 64, 4)])
    model.save_pretrained(root / "student")
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(root / "student")
    (root / "student" / "labels.json").write_text(json.dumps(["negative", "positive"]))
    grow.record_teacher_layers(root / "student", [0, 2])
    return teacher_dir, root / "student"


def test_grow_inserts_the_teacher_block_narrowed_and_keeps_the_student_blocks(pruned_student, tmp_path):
    teacher_dir, student_dir = pruned_student
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    rows = make_frame(16, 0)
    data = encode(tokenizer, rows["text"].tolist(), rows["label"].tolist(), ["negative", "positive"], 32)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    logits = predict_logits(teacher, data, tokenizer.pad_token_id)
    result = grow.grow(
        student_dir, teacher, [0, 2], [0, 1, 2], data, logits, tokenizer.pad_token_id, tmp_path, 0, 8, 0.5, 2.0
    )
    assert result["inserted"] == 1 and result["params_after"] > result["params_before"]

    grown = AutoModelForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True)
    student = AutoModelForSequenceClassification.from_pretrained(student_dir, use_safetensors=True)
    assert grown.config.num_hidden_layers == 3 and grown.config.teacher_layers == [0, 1, 2]
    assert grown.config.intermediate_size == 16
    # the pruned head moved with its block (position 1 -> 2); the inserted block keeps all 4 heads
    assert {int(k): v for k, v in grown.config.pruned_heads.items()} == {2: [1]}
    blocks, old, source = transformer_layers(grown), transformer_layers(student), transformer_layers(teacher)
    assert [b.attention.self.num_attention_heads for b in blocks] == [4, 4, 3]
    for new, before in ((blocks[0], old[0]), (blocks[2], old[1])):
        for a, b in zip(new.state_dict().values(), before.state_dict().values()):
            assert torch.equal(a, b)
    inserted = blocks[1]
    assert torch.equal(inserted.attention.self.query.weight, source[1].attention.self.query.weight)
    # the 16 FFN neurons kept are 16 of the teacher block's 64, in their order
    rows_in = source[1].intermediate.dense.weight
    kept = [int((rows_in == w).all(dim=1).nonzero()[0]) for w in inserted.intermediate.dense.weight]
    assert len(set(kept)) == 16 and kept == sorted(kept)
    # the grown folder is a complete student: tokenizer and labels came along, and it runs
    assert (tmp_path / "labels.json").exists() and (tmp_path / "tokenizer.json").exists()
    assert predict_logits(grown, data, tokenizer.pad_token_id).shape == (len(rows), 2)
