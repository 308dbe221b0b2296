"""The `federated:` section of the params (`miniaturize federate`) lives in `components/config.py` beside the
other sections (`Params.federated`, `FederatedConfig`); re-exported here for the Flower apps and the federation
modules. `server_settings` is what the ServerApp reads: the section, the federation's key and its paths.
"""

from __future__ import annotations

from pathlib import Path

from components.config import DEMO_CLIENTS, FederatedConfig  # noqa: F401


def server_settings(
    cfg: FederatedConfig,
    key: str,
    start_weights: Path,
    out_dir: Path,
    seed: int,
    student_dir: Path | None = None,
    pooled_test: Path | None = None,
) -> dict:
    """What the ServerApp reads (a JSON file the run config names): the federation's config, its key (what a
    checkpoint must match to be resumed), the start's travelling weights (an .npz), where to write, and for
    the pooled evaluation the student folder and the pooled test file (None: no server-side evaluation)."""
    return {
        "federated": cfg.model_dump(mode="json"),
        "key": key,
        "start_weights": str(start_weights),
        "out_dir": str(out_dir),
        "seed": seed,
        "student_dir": str(student_dir) if student_dir else None,
        "pooled_test": str(pooled_test) if pooled_test else None,
    }
