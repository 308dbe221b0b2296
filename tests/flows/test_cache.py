from pathlib import Path

from flows.cache import StageCache, hashes, stage_key, tree_sha256


def make_tree(root: Path) -> Path:
    (root / "model" / "sub").mkdir(parents=True)
    (root / "model" / "a.bin").write_bytes(b"weights")
    (root / "model" / "sub" / "b.json").write_text("{}")
    return root / "model"


def test_tree_hash_follows_content_and_names(tmp_path):
    model = make_tree(tmp_path)
    first = tree_sha256(model)
    assert first == tree_sha256(model) and len(first) == 64
    (model / "a.bin").write_bytes(b"other weights")
    assert tree_sha256(model) != first
    (model / "a.bin").write_bytes(b"weights")
    assert tree_sha256(model) == first
    (model / "a.bin").rename(model / "c.bin")
    assert tree_sha256(model) != first
    assert tree_sha256(tmp_path / "missing") is None


def test_key_changes_with_every_part():
    base = dict(
        name="prune",
        config={"prune": {"ratio": 0.5}},
        parent_key="p",
        inputs={"models/student": "h1"},
        code={"components/classification/prune.py": "c1"},
    )
    key = stage_key(**base)
    for part, value in (
        ("config", {"prune": {"ratio": 0.4}}),
        ("parent_key", "q"),
        ("inputs", {"models/student": "h2"}),
        ("code", {"components/classification/prune.py": "c2"}),
    ):
        assert stage_key(**(base | {part: value})) != key, part
    assert stage_key(**base) == key


def test_a_record_hits_only_with_the_same_key_and_unchanged_outputs(tmp_path):
    model = make_tree(tmp_path)
    store = StageCache(tmp_path)
    outputs = {"model": model}
    assert store.lookup("prune", "k1", outputs) is None
    store.store("prune", "k1", outputs, run_id="run1", metrics={"acc": 0.9}, info={})
    hit = store.lookup("prune", "k1", outputs)
    assert hit is not None and hit.run_id == "run1" and hit.metrics == {"acc": 0.9}
    assert hit.outputs == hashes(outputs)
    assert store.lookup("prune", "k2", outputs) is None  # another key: inputs, code or config changed
    (model / "a.bin").write_bytes(b"edited by hand")
    assert store.lookup("prune", "k1", outputs) is None  # outputs changed since
    store.store("prune", "k1", outputs, run_id="run2", metrics={}, info={})
    assert store.lookup("prune", "k1", outputs).run_id == "run2"
    (model / "a.bin").unlink()
    (model / "sub" / "b.json").unlink()
    (model / "sub").rmdir()
    model.rmdir()
    assert store.lookup("prune", "k1", outputs) is None  # outputs gone
    store.path("prune").write_text("not json")
    assert store.lookup("prune", "k1", outputs) is None  # an unreadable record only costs a re-run
