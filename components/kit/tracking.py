"""The small tracking interface components log through, and a no-op implementation.

Components never import a tracking library: they receive a `Tracker`. `flows.tracking` holds the MLflow
implementation; `NullTracker` (same signatures, does nothing) serves unit tests and dry runs, so the code
never branches on "is tracking on".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...


class NullTracker:
    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


class PrefixedTracker:
    """Prefixes metric and param names (and files an artifact under the prefix), for a stage that trains
    or handles two models in one run."""

    def __init__(self, inner: Tracker, prefix: str):
        self.inner, self.prefix = inner, prefix

    def log_params(self, params: dict[str, Any]) -> None:
        self.inner.log_params({self.prefix + k: v for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, (artifact_path or "") + self.prefix.rstrip("."))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.inner.set_tags(tags)


@dataclass
class StageResult:
    """What a stage hands back: its summary metrics and the paths it wrote."""

    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
