"""The `federated:` settings: defaults, refusals naming the key, what a client's round reads, the section in the
params file."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from components.config import ConfigError, load_params
from components.federated.config import DEMO_CLIENTS, FederatedConfig, server_settings


def test_defaults_are_the_four_vader_clients_fedavg_and_fp16():
    cfg = FederatedConfig()
    assert tuple(cfg.clients) == DEMO_CLIENTS and cfg.strategy == "fedavg" and cfg.wire_dtype == "float16"


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"min_clients": 5, "min_available_clients": 4}, "min_clients"),
        ({"clients": ["movie", "movie"]}, "twice"),
        ({"clients": ["reddit"]}, "clients"),
        ({"rounds": 0}, "rounds"),
        ({"roundz": 3}, "roundz"),
        ({"wire_dtype": "int4"}, "wire_dtype"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(bad, words):
    with pytest.raises(ValidationError) as caught:
        FederatedConfig(**bad)
    assert words in str(caught.value)


def test_a_round_config_and_the_server_settings(tmp_path):
    cfg = FederatedConfig(strategy="fedprox", lr=3e-4)
    assert cfg.local_settings()["lr"] == 3e-4 and "proximal-mu" not in cfg.local_settings()  # FedProx adds it
    settings = server_settings(cfg, "k", tmp_path / "start.npz", tmp_path / "out", 13)
    assert settings["federated"]["strategy"] == "fedprox" and settings["pooled_test"] is None


def test_the_params_file_spells_the_defaults_and_the_smoke_profile_shrinks_them():
    """params.yaml's `federated:` block is the schema's defaults written out (docs/federated.md lists them); the
    smoke profile reads fewer rows and runs fewer rounds; a bad key is refused naming it."""
    assert load_params("params.yaml").federated == FederatedConfig()
    smoke = load_params("params.yaml", profile="smoke").federated
    assert (smoke.max_rows_per_client, smoke.rounds, smoke.max_length) == (200, 2, 32)
    with pytest.raises(ConfigError, match="federated.roundz"):
        load_params("params.yaml", overrides=["federated.roundz=3"])
