"""The batch helpers (components/kit/batches.py): a batch's name; drop_seen and the warm start's batches are
exercised in tests/components/classification/test_update.py, their import without torch in tests/flows/test_cli.py."""

from __future__ import annotations

import pytest

from components.kit.batches import batch_name


@pytest.mark.parametrize(
    "source, name",
    [("vader-amazon", "amazon"), ("data/week 12.csv", "week-12"), ("/abs/path/new.parquet", "new"), ("org/ds", "ds")],
)
def test_batch_name(source, name):
    assert batch_name(source) == name
