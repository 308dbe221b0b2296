"""End to end, a bad data file: `miniaturize run --data FILE` stops at validation with exit 3, before any
training, and leaves no model, no registration and the validation report. (In a module of its own, apart
from the smoke run's module, so the two can run on different test workers.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.conftest import make_project, run_cli

pytestmark = pytest.mark.e2e


def bad_file(path: Path) -> Path:
    """Two faults in one file (labels outside the set, empty texts): one run shows that validation names every
    failed check. Each check on its own, and a missing column, are tested in tests/components/test_validate.py."""
    from tests.conftest import make_frame

    frame = make_frame(40)
    frame.loc[[3, 10, 20], "label"] = "neutral"
    frame = frame.drop_duplicates("text")  # keep ingest's de-duplication out of the picture
    frame.loc[frame.index[[2, 5, 30]], "text"] = ["", " ", "\t"]
    frame.to_csv(path, index=False)
    return path


def test_bad_dataset_stops_at_validation_naming_every_failed_check(tmp_path, prefect_api):
    project = make_project(tmp_path / "project")
    (project / "data").mkdir(exist_ok=True)  # a data file must lie inside the project
    data = bad_file(project / "data" / "bad.csv")
    done = run_cli(["run", "--data", str(data), "--set", "data.labels=[negative, positive]"], project, prefect_api)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "data validation failed" in done.stderr
    assert "label_in_set on column 'label'" in done.stderr and "on column 'text'" in done.stderr, done.stderr
    assert "[finetune] started" not in done.stdout
    assert not (project / "models").exists() and not (project / "reports" / "registration.json").exists()
    assert (project / "reports" / "validation" / "validation.json").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.search_registered_models() == []
