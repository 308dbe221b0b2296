"""What a task and its stages are (`Task`, `Stage`, `StageIO`), and the helpers every task's stages share.

A task is one record (`Task`): its name and params file, its stages in run order, its workspace layout, and
the few things that differ between tasks (the registered model's quality figure, the gate, the report
summary, the pre-flight check, the DVC stage names). Each task builds its record in its own module,
`flows/tasks/<task>.py`, and `flows.tasks.TASKS` names them all; the generic runner (`flows.pipeline`), the
CLI, the registry and dvc.yaml read only these records, never a task's name.

Both the Prefect flow and `miniaturize stage NAME` (what dvc.yaml runs) run a stage through
`flows.pipeline.execute_stage`, so a stage does the same thing whichever way it is started.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import Params
from components.kit.gate import GateDecision
from components.kit.tracking import StageResult, Tracker
from flows.workspace import Workspace

StageFn = Callable[[Params, Any, Tracker], StageResult]  # (params, workspace, tracker) -> result


@dataclass(frozen=True)
class StageIO:
    """Workspace paths a stage reads and writes (names of its task's `Workspace` properties) and the
    components it runs: what its content-addressed key hashes. dvc.yaml declares the same deps and outs."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # Module names under components/ (a task's stage module, a kit module, a top-level one) or full dotted
    # names: the stage's module and the kit modules it imports, whose source the stage key hashes.
    code: tuple[str, ...]
    # Outputs the stage may leave unwritten (an ablation it was told to skip); every other output must exist
    # when the stage returns, or the run fails rather than record a stage that wrote nothing.
    optional: tuple[str, ...] = ()

    def missing(self, ws) -> list[str]:
        """The required outputs the stage did not write (paths on `ws`, its staging view)."""
        return [role for role in self.outputs if role not in self.optional and not Path(getattr(ws, role)).exists()]


@dataclass(frozen=True)
class Stage:
    """One stage of a task: the function that runs it, what it reads, writes and runs, the params it sees
    (its own section, plus what it borrows, exactly: tests/flows/test_dvc_yaml.py), and what the generic
    runner must know about it."""

    run: StageFn
    io: StageIO
    sections: tuple[str, ...]
    data_parallel: bool = False  # trains on `distributed.processes` processes (flows.launch)
    trains: bool = False  # trains models in this process (data_parallel stages do too): at `threads` torch threads
    reads_data_source: bool = False  # the user's data file (`Task.data_source`) is one of its inputs
    # Registers a model: its result's info is the run's registration, its cached record counts only while
    # that version still exists, and its key covers the registry it registered in.
    registers: bool = False
    # The stage whose key this one's chains to (None: the stage before it). A stage that reads only earlier
    # outputs names the last stage it depends on, so a change to a stage in between does not re-run it.
    after: str | None = None


@dataclass(frozen=True)
class Judging:
    """How the registry judges a task's candidate (`flows.registry.judge`)."""

    quality: str  # the final model's figure the champion check compares ("accuracy", "perplexity")
    settings: Callable[[Params], Any]  # its gate's section of the params
    against_teacher: Callable[[dict, Any], GateDecision]  # (the report, settings): its checks against the teacher
    against_champion: Callable[[dict, dict, Any], GateDecision]  # (candidate, champion figures, settings)
    # The quality figure of an ONNX model folder on one split of the prepared data: (model, prepared, split).
    remeasure: Callable[[Path, Path, str, Params], float | None]


@dataclass(frozen=True)
class Axis:
    """A figure of the report's model entries that `dvc plots show` draws (`flows.stage_metrics`)."""

    key: str  # dotted key in a model entry of the report, e.g. "latency_ms.batch1_p50"
    column: str  # its column in the plot data, without dots (Vega reads a dot as a nested field)
    higher_is_better: bool  # for the Pareto front
    scale: float = 1.0  # e.g. 1e-6 for bytes -> MB


@dataclass(frozen=True)
class Plots:
    """What dvc.yaml's plots draw for a task: each training stage's per-epoch figures, and every model of the
    report by its quality (the first axis) against each other axis, with the models no other one beats on
    all axes (the Pareto front)."""

    curves: tuple[str, ...]  # per-epoch figures the training loop logs, e.g. ("train_loss", "val_accuracy")
    models: tuple[Axis, ...]  # quality first, then e.g. latency and size


@dataclass(frozen=True)
class Task:
    """Everything that differs between tasks; a record, built once in `flows/tasks/<task>.py`."""

    name: str  # the params' `task:` value (exported by the task's component package as NAME)
    params_file: str  # the params file its DVC stages read
    stages: Mapping[str, Stage]  # in run order
    workspace: Callable[[Path], Workspace]  # its layout: where each stage reads and writes under a root
    data_source: str  # the dotted params key naming the user's data (a file there is an input of ingest)
    bundle_kind: str  # the kind of edge bundle its models make (`manifest.json`'s task)
    dvc_prefix: str  # its dvc.yaml stage names start with this
    dvc_note: tuple[str, ...]  # comment lines above its stages in dvc.yaml
    judging: Judging  # how the registry judges its candidates
    plots: Plots  # what `dvc plots show` draws of its runs
    bundle_metrics: Callable[[dict], dict]  # the final model's figures (report entry) a bundle manifest carries
    summary: Callable[[dict], list[str]]  # what `miniaturize run` prints of the report
    report_files: str  # what is written beside the Markdown report, as the summary names it
    preflight: Callable[[Params, Path, bool], None]  # (params, root, search): ConfigError before anything runs
    # `miniaturize bench`: (params, workspace, repeats) -> (result, text); None when the task has none.
    bench: Callable[[Params, Any, int], tuple[dict, str]] | None = None
    # What an incremental update starts from (flows/update.py): (params, workspace, folder) writes it into the
    # folder, logged with every registered version as its `warm_start/` artifact, and returns the version's
    # tags that say which data it saw. None when the task has no incremental updates.
    warm_start: Callable[[Params, Any, Path], dict[str, str]] | None = None
    # Further data files the stage that reads the data source reads: {params key: path}, e.g. a multitask
    # task's own label file; each is an input of that stage like the data source.
    more_data_sources: Callable[[Params], dict[str, str]] = lambda p: {}


def stage_paths(ws: Workspace, names: tuple[str, ...]) -> dict[str, Path]:
    """{path relative to the root: path} for the named workspace properties."""
    paths = [getattr(ws, name) for name in names]
    return {path.relative_to(ws.root).as_posix(): path for path in paths}


def code_files(modules: tuple[str, ...]) -> dict[str, Path]:
    """The source file of each module: a name under components/ ("validate", "kit.gate",
    "classification.prune") or a full dotted module name ("flows.registry", "components.config")."""
    names = [m if m.split(".")[0] in ("components", "flows") else f"components.{m}" for m in modules]
    return {name.replace(".", "/") + ".py": Path(importlib.util.find_spec(name).origin) for name in names}


def stage_config(params: Params, sections: tuple[str, ...]) -> dict:
    """The params a stage sees, by section name (dotted names reach into a section, e.g. lm.teacher)."""
    tree = params.as_dict()
    return {section: _node(tree, section) for section in sections}


def lookup(params: Params, dotted: str) -> Any:
    """The value of a dotted params key, e.g. "lm.data.source"."""
    return _node(params.as_dict(), dotted)


def _node(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def merge(main: StageResult, extra: StageResult, prefix: str) -> StageResult:
    return StageResult(
        metrics=main.metrics | {prefix + k: v for k, v in extra.metrics.items()},
        outputs=main.outputs | {prefix + k: v for k, v in extra.outputs.items()},
        info=main.info | {prefix.rstrip("."): extra.info},
    )
