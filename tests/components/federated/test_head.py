"""The classifier layer refitted from the clients' statistics (CCVR), on the tiny random BERT: what a client
sends (counts, means and covariances of its classifier inputs per class, nothing else), which statistics a
server refuses, and a refit that corrects a layer biased to one class while leaving every other weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.federated import head, local
from tests.conftest import make_frame, tiny_bert, write_prepared


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("student"), dropout=0.0)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    train = make_frame(9, 0).iloc[:-3]  # 7 negative, 8 positive rows: unequal classes
    frames = {"train": train, "validation": make_frame(2, 100), "test": make_frame(2, 200)}
    return write_prepared(tmp_path_factory.mktemp("shard"), frames)


def weights_of(student_dir):
    model, _, _ = local.load_student(student_dir)
    return local.get_arrays(model)


def test_statistics_are_each_class_count_mean_and_covariance():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(10, 3)).astype(np.float32)
    labels = np.array([0] * 6 + [1] * 3 + [2])
    stats = head.statistics_of(features, labels, 3)
    assert set(stats) == {"rows.0", "mean.0", "cov.0", "rows.1", "mean.1", "cov.1"}  # class 2: one row, left out
    assert stats["rows.0"][0] == 6 and stats["rows.1"][0] == 3
    np.testing.assert_allclose(stats["mean.1"], features[6:9].mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["cov.0"], np.cov(features[:6], rowvar=False), rtol=1e-4, atol=1e-6)


def test_a_client_sends_its_classifier_inputs_statistics_per_class(student, shard):
    weights = weights_of(student)
    stats = head.head_statistics(student, shard, weights, 32)
    model, tokenizer, labels = local.load_student(student)
    width = head.classifier_layer(model).in_features
    assert {k: v.shape for k, v in stats.items()} == {
        "rows.0": (1,),
        "mean.0": (width,),
        "cov.0": (width, width),
        "rows.1": (1,),
        "mean.1": (width,),
        "cov.1": (width, width),
    }
    assert labels == ["negative", "positive"] and (stats["rows.0"][0], stats["rows.1"][0]) == (7, 8)
    data = local.encode_rows(tokenizer, local.read_split(shard, "train"), labels, 32)
    inputs = head.classifier_inputs(model, data, tokenizer.pad_token_id)
    np.testing.assert_allclose(stats["mean.1"], inputs[data.labels == 1].mean(0), rtol=1e-4, atol=1e-5)
    assert head.usable(stats, width)


def test_statistics_that_are_not_finite_or_not_the_models_shapes_are_refused():
    good = {"rows.0": np.array([5.0]), "mean.0": np.zeros(4), "cov.0": np.eye(4)}
    assert head.usable(good, 4)
    assert not head.usable(good | {"mean.0": np.full(4, np.nan)}, 4)
    assert not head.usable(good | {"cov.0": np.full((4, 4), np.inf)}, 4)
    assert not head.usable(good, 8)  # another model's width
    assert not head.usable(good | {"rows.0": np.array([1.0])}, 4)
    assert not head.usable(good | {"text": np.zeros(1)}, 4)
    assert not head.usable({}, 4)


def test_the_refit_corrects_a_layer_biased_to_one_class_and_keeps_every_other_weight(student):
    weights = weights_of(student)
    width = weights["classifier.weight"].shape[1]
    biased = weights | {
        "classifier.weight": np.zeros_like(weights["classifier.weight"]),
        "classifier.bias": np.array([4.0, -4.0], dtype=np.float32),  # everything "negative"
    }
    direction = np.zeros(width, dtype=np.float32)
    direction[0] = 1.0
    # two clients with opposite label mixes, classes apart along one direction
    clients = [
        {
            "rows.0": np.array([n0], np.float32),
            "mean.0": -direction,
            "cov.0": 0.05 * np.eye(width, dtype=np.float32),
            "rows.1": np.array([n1], np.float32),
            "mean.1": direction,
            "cov.1": 0.05 * np.eye(width, dtype=np.float32),
        }
        for n0, n1 in ((40, 10), (10, 40))
    ]
    refitted = head.fit_head(student, biased, clients, seed=0, steps=300, lr=1e-2)
    layer = torch.nn.Linear(width, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(refitted["classifier.weight"]))
        layer.bias.copy_(torch.from_numpy(refitted["classifier.bias"]))
        predicted = layer(torch.from_numpy(np.stack([-direction, direction]))).argmax(-1).tolist()
    assert predicted == [0, 1]
    assert all(np.array_equal(refitted[n], biased[n]) for n in biased if not n.startswith("classifier."))
    assert head.fit_head(student, biased, [{"mean.0": np.full(width, np.nan)}], seed=0) is biased
