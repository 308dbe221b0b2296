"""A stage that fails with a transient error (connection reset, timeout) is run again by Prefect; one that
fails deterministically (bad data, a bug) is not: it would fail the same way."""

from __future__ import annotations

import pytest

from flows.retries import TransientError, is_transient
from tests.reliability.conftest import run_pipeline


def flaky(real, errors: list[Exception], calls: list[int]):
    """The stage record `real`, its function failing with each of `errors` first."""
    from dataclasses import replace

    def stage(p, ws, tracker):
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return real.run(p, ws, tracker)

    return replace(real, run=stage)


def test_a_transient_error_is_retried_and_the_run_completes(tiny_project, prefect_api, monkeypatch):
    from flows.tasks.classification import STAGES

    calls: list[int] = []
    monkeypatch.setitem(
        STAGES, "ingest", flaky(STAGES["ingest"], [ConnectionResetError(104, "Connection reset by peer")], calls)
    )
    outcome = run_pipeline(tiny_project, prefect_api, until="ingest")
    assert len(calls) == 2 and not outcome["stages"]["ingest"]["cache_hit"]
    assert (tiny_project / "data" / "prepared" / "train.parquet").is_file()


def test_a_deterministic_error_is_not_retried(tiny_project, prefect_api, monkeypatch):
    from flows.tasks.classification import STAGES

    calls: list[int] = []
    monkeypatch.setitem(STAGES, "ingest", flaky(STAGES["ingest"], [ValueError("column 'text' holds numbers")], calls))
    with pytest.raises(ValueError, match="holds numbers"):
        run_pipeline(tiny_project, prefect_api, until="ingest")
    assert len(calls) == 1
    assert not (tiny_project / "data" / "prepared").exists()


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError("read timed out"), True),
        (TransientError("GPU busy"), True),
        (FileNotFoundError(2, "No such file"), False),
        (ValueError("bad value"), False),
        (KeyError("label"), False),
        (RuntimeError("shape mismatch"), False),
    ],
)
def test_errors_are_classified(error, transient):
    assert is_transient(error) is transient


def test_mlflow_errors_are_classified():
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2 as codes

    assert is_transient(MlflowException("Max retries exceeded", error_code=codes.INTERNAL_ERROR))
    assert is_transient(MlflowException("busy", error_code=codes.TEMPORARILY_UNAVAILABLE))
    assert not is_transient(MlflowException("no such model", error_code=codes.RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(MlflowException("bad name", error_code=codes.INVALID_PARAMETER_VALUE))
