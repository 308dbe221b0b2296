import pytest

from components.kit.files import write_atomic


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
