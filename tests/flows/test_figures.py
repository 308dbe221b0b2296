"""`miniaturize figures`: the docs section is the report itself under a stamp read from the registry."""

from __future__ import annotations

import json

import pytest

from flows.figures import Stamp, read_stamp, replace_section, section

REPORT = """# Compression report

Dataset `x` (sha256 `5d7c06e027fc`), test rows: 40.

| model | accuracy |
|---|---:|
| final | 0.6500 |

## Gate: PASSED
"""
STAMP = Stamp(
    model_uri="models:/m/3",
    git_commit="0123456789abcdef0123",
    params_hash="ab12",
    command="`miniaturize run` with the committed params.yaml",
)


def test_section_is_the_report_under_its_stamp():
    text = section("classification", REPORT, "reports/compression_report.md", STAMP)
    assert text.startswith("<!-- figures:classification -->\n### classification: models:/m/3\n")
    assert text.endswith("<!-- /figures:classification -->\n")
    assert "commit `0123456789ab`" in text and "params hash `ab12`" in text and "committed params.yaml" in text
    assert "# Compression report" not in text and "#### Gate: PASSED" in text  # headings below the section's
    assert "| final | 0.6500 |" in text


def test_replace_section_replaces_only_that_task_and_appends_a_missing_one():
    old = section("classification", REPORT.replace("0.6500", "0.1000"), "r.md", STAMP)
    other = section("causal-lm", REPORT, "r.md", STAMP)
    page = f"# Measured\n\nintro\n\n{old}\ntext between\n\n{other}"
    new = section("classification", REPORT, "r.md", STAMP)
    updated = replace_section(page, "classification", new)
    assert "0.1000" not in updated and updated.count("| final | 0.6500 |") == 2
    assert "intro" in updated and "text between" in updated and other in updated
    assert replace_section("# Measured\n", "classification", new) == "# Measured\n\n" + new


def test_stamp_comes_from_the_registered_version(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    run = client.create_run(client.create_experiment("e"))
    client.create_model_version(
        "m", f"runs:/{run.info.run_id}/model", run.info.run_id, tags={"git_commit": "c0ffee" * 6, "params_hash": "ab12"}
    )
    (tmp_path / "registration.json").write_text(
        json.dumps({"model_name": "m", "version": "1", "model_uri": "models:/m/1"})
    )
    same = read_stamp(tmp_path, tmp_path / "params.yaml", "ab12", uri)
    assert same.model_uri == "models:/m/1" and same.git_commit.startswith("c0ffee") and "committed" in same.command
    other = read_stamp(tmp_path, tmp_path / "params.yaml", "ffff", uri)
    assert "other than" in other.command
    with pytest.raises(FileNotFoundError, match="registered"):
        read_stamp(tmp_path / "nothing", tmp_path / "params.yaml", "ab12", uri)
