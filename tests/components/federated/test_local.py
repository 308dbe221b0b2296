"""A client's round without Flower, on the tiny random BERT: what travels (all but the word embeddings), an
fp16 update that moves the model, distillation from a local teacher (its logits cached), FedProx's term
keeping the update closer to the start, and the central baseline on the union of shards."""

from __future__ import annotations

import numpy as np
import pytest

from components.federated import local, updates
from tests.conftest import make_frame, tiny_bert, write_prepared

SETTINGS = local.LocalSettings(local_epochs=1, lr=1e-2, batch_size=8, max_length=32, distill=False)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("student"), dropout=0.0)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    frames = {"train": make_frame(12, 0), "validation": make_frame(4, 100), "test": make_frame(4, 200)}
    return write_prepared(tmp_path_factory.mktemp("shard"), frames)


def start_of(student_dir):
    model, _, _ = local.load_student(student_dir)
    return local.get_arrays(model)


def test_everything_but_the_word_embeddings_travels(student):
    model, _, _ = local.load_student(student)
    names = local.trainable_names(model)
    assert "bert.embeddings.word_embeddings.weight" not in names
    assert "classifier.weight" in names and "bert.embeddings.position_embeddings.weight" in names
    table = model.get_input_embeddings().weight.numel()
    travelling = sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert travelling < table  # the 30k-row table of the tiny model dominates: it never travels


def test_a_round_returns_an_fp16_update_and_its_figures(student, shard):
    start = start_of(student)
    update, figures = local.client_round(student, shard, start, SETTINGS, "float16", seed=0)
    assert set(update) == set(start) and all(v.dtype == np.float16 for v in update.values())
    assert updates.check_update(update, start, max_norm_ratio=10).accepted
    assert updates.global_norm(update) > 0
    assert figures["num-examples"] == 24 and figures["bytes_up"] * 2 == figures["bytes_down"]
    assert 0 <= figures["received_test_accuracy"] <= 1 and figures["distilled"] == 0.0


def test_distillation_uses_the_local_teacher_and_caches_its_logits(student, shard, tiny_teacher_dir, tmp_path):
    start = start_of(student)
    settings = local.LocalSettings(**{**SETTINGS.__dict__, "distill": True})
    _, figures = local.client_round(student, shard, start, settings, "float16", 0, tiny_teacher_dir, tmp_path)
    assert figures["distilled"] == 1.0
    assert len(list(tmp_path.glob("teacher_logits-*.npy"))) == 1


def test_the_proximal_term_keeps_the_update_nearer_the_start(student, shard):
    start = start_of(student)
    plain, _ = local.client_round(student, shard, start, SETTINGS, "float32", seed=0)
    prox = local.LocalSettings(**{**SETTINGS.__dict__, "proximal_mu": 50.0})
    held, _ = local.client_round(student, shard, start, prox, "float32", seed=0)
    assert updates.global_norm(held) < updates.global_norm(plain)


def test_settings_come_from_a_round_config():
    settings = local.LocalSettings.from_config(
        {"local-epochs": 2, "lr": 0.001, "distill": False, "proximal-mu": 0.1, "server-round": 3}
    )
    assert (settings.local_epochs, settings.lr, settings.distill, settings.proximal_mu) == (2, 0.001, False, 0.1)


def test_write_student_and_the_central_baseline(student, shard, tmp_path):
    start = start_of(student)
    moved = {k: v + 0.01 for k, v in start.items()}
    out = local.write_student(student, moved, tmp_path / "federated", {"rounds": 1})
    assert np.allclose(start_of(out)["classifier.bias"], moved["classifier.bias"])
    metrics = local.finetune_central(student, [shard, shard], SETTINGS, 1, 0, tmp_path / "central")
    assert metrics["epochs_run"] == 1 and (tmp_path / "central" / "model.safetensors").exists()
