"""The same data, params and seed give the same prepared data, byte for byte: the built-in data at smoke
scale, ingested twice (the accuracy check, a second run from scratch, is in test_complete_run.py)."""

from __future__ import annotations

from flows import cache


def test_ingest_of_the_built_in_data_at_smoke_scale_is_byte_identical(tmp_path):
    from components import ingest
    from components.config import load_params
    from components.tracking import NullTracker
    from tests.flows.conftest import REPO

    cfg = load_params(REPO / "params.yaml", "smoke").data
    raw = REPO / "data" / "raw"
    hashes = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt / "prepared"
        ingest.run(cfg, out, NullTracker(), cache_dir=raw if raw.is_dir() else tmp_path / "raw", root=tmp_path)
        hashes.append(cache.tree_sha256(out))
    assert hashes[0] == hashes[1]
