"""The server's pure decisions: an update is refused for NaN, inf, wrong shapes or a norm out of bounds; the
mean is weighted by rows; fp16 transfer loses little; a checkpoint resumes only the same federation."""

from __future__ import annotations

import numpy as np
import pytest

from components.federated import updates


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"layer.weight": rng.normal(0, 0.05, (8, 4)).astype(np.float32), "layer.bias": np.zeros(8, np.float32)}


def small_update(seed: int = 1, scale: float = 1e-3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, scale, v.shape).astype(np.float32) for k, v in weights().items()}


def test_a_plain_update_is_accepted_with_its_norm_ratio():
    verdict = updates.check_update(small_update(), weights(), max_norm_ratio=0.5)
    assert verdict.accepted and 0 < verdict.norm_ratio < 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    update = small_update()
    update["layer.bias"][3] = bad
    verdict = updates.check_update(update, weights(), max_norm_ratio=0.5)
    assert not verdict.accepted and "non-finite" in verdict.reason


def test_non_finite_values_in_fp16_are_refused_too():
    update = updates.to_wire(small_update(), "float16")
    update["layer.weight"][0, 0] = np.float16(np.inf)
    assert not updates.check_update(update, weights(), 0.5).accepted


def test_a_wildly_scaled_update_is_refused():
    update = {k: v * 1e4 for k, v in small_update().items()}
    verdict = updates.check_update(update, weights(), max_norm_ratio=0.5)
    assert not verdict.accepted and "above the bound" in verdict.reason


def test_wrong_names_or_shapes_are_refused():
    update = small_update()
    update["layer.weight"] = update["layer.weight"][:4]
    assert "shape" in updates.check_update(update, weights(), 0.5).reason
    assert "names differ" in updates.check_update({"other": np.zeros(1)}, weights(), 0.5).reason


def test_outliers_by_median_need_three_updates():
    assert updates.outliers({"a": 0.01, "b": 0.4}, max_median_factor=10) == {}
    refused = updates.outliers({"a": 0.01, "b": 0.012, "c": 0.3}, max_median_factor=10)
    assert list(refused) == ["c"] and "median" in refused["c"]


def test_weighted_mean_weights_by_rows_and_apply_adds_it():
    a = {"w": np.ones(3, np.float32)}
    b = {"w": np.full(3, 4.0, np.float16)}
    mean = updates.weighted_mean([a, b], [3, 1])
    assert mean["w"].dtype == np.float32 and np.allclose(mean["w"], 1.75)
    assert np.allclose(updates.apply_update({"w": np.zeros(3)}, mean)["w"], 1.75)
    assert np.allclose(updates.apply_update({"w": np.ones(3)}, mean, server_lr=2.0)["w"], 4.5)
    with pytest.raises(ValueError):
        updates.weighted_mean([], [])


def test_aggregation_weights_count_rows_or_each_client_once():
    rows = {"movie": 8056.0, "tweets": 2698.0}
    assert updates.aggregation_weights(rows, "rows") == rows
    assert updates.aggregation_weights(rows, "equal") == {"movie": 1.0, "tweets": 1.0}
    a, b = {"w": np.full(2, 3.0, np.float32)}, {"w": np.ones(2, np.float32)}
    equal = updates.aggregation_weights(rows, "equal")
    assert np.allclose(updates.weighted_mean([a, b], [equal["movie"], equal["tweets"]])["w"], 2.0)
    with pytest.raises(ValueError, match="rows or equal"):
        updates.aggregation_weights(rows, "median")


def test_fp16_transfer_halves_the_bytes_and_keeps_an_update_close():
    update = small_update()
    wire = updates.to_wire(update, "float16")
    assert updates.payload_bytes(wire) * 2 == updates.payload_bytes(update)
    back = updates.to_float32(wire)
    error = updates.global_norm(updates.difference(back, update)) / updates.global_norm(update)
    assert error < 1e-3


def test_a_checkpoint_resumes_only_the_same_federation(tmp_path):
    rounds = [{"round": 1, "pooled_accuracy": 0.6}]
    updates.save_checkpoint(tmp_path, "key-a", 1, weights(), rounds)
    done, saved, history = updates.load_checkpoint(tmp_path, "key-a")
    assert done == 1 and history == rounds
    assert all(np.array_equal(saved[k], v) for k, v in weights().items())
    assert updates.load_checkpoint(tmp_path, "key-b") is None
    assert updates.load_checkpoint(tmp_path / "none", "key-a") is None
    updates.save_checkpoint(tmp_path, "key-a", 2, weights(3), rounds + [{"round": 2}])
    assert updates.load_checkpoint(tmp_path, "key-a")[0] == 2
    assert not list(tmp_path.glob("tmp-*"))
