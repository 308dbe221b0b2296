"""Credentials come from the environment: params that carry a password are refused, and credential values
are masked in what is sent to MLflow (a complete run with planted credentials is searched for them in
test_complete_run.py)."""

from __future__ import annotations

import pytest

from components.config import ConfigError
from components.kit.secrets import redact
from tests.reliability.conftest import load


def test_params_with_a_password_are_refused(tiny_project):
    with pytest.raises(
        ConfigError, match="data.source holds a password in its URL; credentials belong in the environment"
    ):
        load(tiny_project, "data.source=https://reader:s3cret-pass@data.example.com/reviews.csv")


def test_redact_masks_environment_credentials_and_url_passwords(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-hunter2")
    text = redact("uri http://bob:hunter2-hunter2@mlflow:5000 and token hunter2-hunter2 and s3://bucket/key")
    assert text == "uri http://bob:***@mlflow:5000 and token *** and s3://bucket/key"
