"""The same data, params and seed give the same prepared data, byte for byte, and the same test accuracy
within 0.2 points: the built-in data at smoke scale is ingested twice, and the real teacher fine-tuned on it
twice with the smoke profile's settings (a second run of the whole tiny pipeline from scratch is compared in
test_complete_run.py)."""

from __future__ import annotations

from flows import cache

TOLERANCE_POINTS = 0.2


def test_smoke_scale_data_hash_and_teacher_accuracy_repeat(tmp_path):
    from components.classification import finetune, ingest
    from components.config import load_params
    from components.kit.tracking import NullTracker
    from tests.flows.conftest import REPO

    params = load_params(REPO / "params.yaml", "smoke")
    raw = REPO / "data" / "raw"
    hashes, accuracies = [], []
    for attempt in ("a", "b"):
        prepared = tmp_path / attempt / "prepared"
        ingest.run(
            params.data, prepared, NullTracker(), cache_dir=raw if raw.is_dir() else tmp_path / "raw", root=tmp_path
        )
        hashes.append(cache.tree_sha256(prepared))
        result = finetune.run(params.teacher, prepared, tmp_path / attempt / "teacher", NullTracker(), seed=params.seed)
        accuracies.append(result.metrics["test_accuracy"])
    assert hashes[0] == hashes[1]
    assert abs(accuracies[0] - accuracies[1]) * 100 <= TOLERANCE_POINTS, accuracies
