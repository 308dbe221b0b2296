"""Register the final ONNX model in the MLflow model registry and move aliases through the gate.

Decide, then act: `components.kit.gate` judges the report's ratios against the teacher and the candidate against
the current champion; `components.kit.promotion` replays the alias history. This module only logs the model,
tags the version and moves aliases: `champion` when every check passes, `challenger` otherwise (the
champion stays where it was).

Each version records where its figures come from: `data_sha256` (the data), `metrics_split` (the split of
its `final.*` figures) and `ratios_split` (the split of its `final_vs_teacher.*` ratios: test for a
pipeline run, validation for a search choice). The champion check compares like with like: when the
champion's figure comes from other data or another split, and the workspace holds the candidate's data,
the champion's registered model is re-measured on the candidate's split (`remeasure_champion`: its ONNX
bundle on that parquet split, seconds); otherwise that check is skipped with the reason as its note.

Every registered version also carries its edge bundle (`components.bundle.package` of the model folder) as
the run's `edge_bundle/` artifact, and that bundle's manifest sha256 as the version tag
`bundle.manifest_sha256`: `miniaturize serve-model models:/...` serves that bundle only when its manifest
still has that sha256.

The registered model's name is `Params.registered_model_name` (components/config.py): `register.model_name`
when set, else made from the task and its data, so two datasets never share a champion. Each version is tagged
with its data's source (`data_source`, `components.config.data_source_id`: the same for every version of a file
that grows), and the champion check refuses a champion of another data source (`other_data_source`).

What MLflow shows of a version: the ONNX model with a signature read from its graph (`signature`: every input
and output, its element type and shape) and an input example (`input_example`: one tokenized sentence), its
model card (`components.model_card`) as its description and as the run's `MODEL_CARD.md`, and the same card in
the Hugging Face format as its edge bundle's README.md.

Every alias move is recorded twice: as tags on the version (`alias.<alias>.set_at|reason|by|forced`) and
as one JSON event in the history run (`alias_history/` artifacts of the run `alias-history-<model>` in
the experiment `miniaturize-registry`), which `rollback` replays.
"""

from __future__ import annotations

import getpass
import json
import math
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from components import model_card
from components.config import Params, data_source_id, section_hash
from components.kit import gate
from components.kit.hashing import prepared_sha256
from components.kit.promotion import CHALLENGER, CHAMPION, event, rollback_target
from components.kit.tracking import StageResult, Tracker
from flows.stages import Task, stage_config
from flows.workspace import Workspace

# What the registered ONNX model needs to run through mlflow.pyfunc; given explicitly because
# inferring requirements costs 5-10 s per model.
PIP_REQUIREMENTS = ["onnx", "onnxruntime", "numpy"]
HISTORY = "alias_history"
REGISTRY_EXPERIMENT = "miniaturize-registry"
BUNDLE = "bundle"  # the run artifact holding a version's model folder (what evaluation and serving load)
EDGE_BUNDLE = "edge_bundle"  # the run artifact holding a version's edge bundle
WARM_START = "warm_start"  # the run artifact an incremental update of a version starts from (Task.warm_start)
MANIFEST_TAG = "bundle.manifest_sha256"  # the version tag pinning that bundle's manifest.json
METRICS_SPLIT = "test"  # the split of a pipeline version's final.* figures and ratios
DATA_SOURCE_TAG = "data_source"  # the version tag naming its data's source (`components.config.data_source_id`)
MODEL_CARD = "MODEL_CARD.md"  # the run artifact holding a version's model card
DESCRIPTION_CHARS = 5000  # what MLflow's store keeps of a version's description
# The stages a model card's compression chain lists, where the task has them (each with its own params section).
CARD_CHAIN = ("finetune", "distill", "prune", "trim", "quantize")
# The input example's sentence: a fixed one, so that no row of the user's data is copied into the registry.
EXAMPLE_SENTENCE = "the film was a quiet, moving surprise"


class GateRejected(RuntimeError):
    """A manual promotion the gate refused; the message lists the failed checks."""


class BundleNotRegistered(LookupError):
    """A registered version without an edge bundle pinned by its `bundle.manifest_sha256` tag."""


def git_commit(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def who(command: str) -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} ({command})"


def alias_for(gate_passed: bool) -> str:
    return CHAMPION if gate_passed else CHALLENGER


def version_tags(task: Task, p: Params, ws: Workspace, report: dict, parent_run_id: str | None) -> dict[str, str]:
    verdict = report["gate"]
    final = report["models"]["final"]
    # a figure not measured (None) gets no tag: the champion check then reads None and fails, not 0
    quality = {key: f"{final[key]:.6g}" for key in (task.judging.quality,) if final.get(key) is not None}
    return {
        "git_commit": git_commit(ws.root),
        "data_sha256": report["dataset"]["sha256"],
        "params_hash": section_hash(p.as_dict()),
        "parent_run_id": parent_run_id or "",
        "gate_passed": str(verdict["passed"]).lower(),
        "gate_failed_checks": ",".join(k for k, c in verdict["checks"].items() if not c["passed"]),
        "task": report["task"],
        DATA_SOURCE_TAG: data_source_id(p.data_source()),
        "metrics_split": METRICS_SPLIT,
        "ratios_split": report.get("split", METRICS_SPLIT),
        **{f"final.{key}": value for key, value in quality.items()},
        "final.size_bytes": str(int(final["size_bytes"])),
        **{f"final_vs_teacher.{k}": f"{v:.6g}" for k, v in report["final_vs_teacher"].items() if v is not None},
        # a multitask model's figures per task: final.accuracy.sentiment, final.f1_macro.sentiment, ...
        **{
            f"final.{key}.{name}": f"{value:.6g}"
            for name, scores in final.get("tasks", {}).items()
            for key, value in scores.items()
            if value is not None
        },
    }


def lineage_tags(task: Task, client, parent_run_id: str) -> dict[str, str]:
    """Stage key, run and cache hit of every stage of the pipeline run: which runs made this version, and the
    run that trained its teacher (the stage whose output is the teacher)."""
    teacher_stages = {name for name, stage in task.stages.items() if "teacher" in stage.io.outputs}
    run = client.get_run(parent_run_id)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    tags = {}
    for child in children:
        stage = child.data.tags.get("miniaturize.stage")
        if not stage:
            continue
        source = child.data.tags.get("miniaturize.source_run_id") or child.info.run_id
        tags[f"lineage.{stage}.key"] = child.data.tags.get("miniaturize.stage_key", "")
        tags[f"lineage.{stage}.run"] = source
        if stage in teacher_stages:
            tags["teacher_run_id"] = source
    return tags


def log_version(
    task: Task,
    p: Params,
    run_id: str,
    model_dir: Path,
    report: Path,
    tags: dict[str, str],
    name: str | None = None,
    chain: dict[str, dict] | None = None,
) -> str:
    """Log the ONNX model of model_dir under the MLflow run as a new version of `name` (default: the params'
    `registered_model_name`), with its signature and input example, its folder (tokenizer, labels) as the
    `bundle` artifact, the report, the tags, its model card (description and `MODEL_CARD.md`; `chain`: the
    compression steps it lists, default the params' own, `card_chain`) and its edge bundle; returns the version."""
    import mlflow
    import onnx

    name = name or p.registered_model_name()
    model = onnx.load(str(model_dir / "model.onnx"))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(
            model,
            name="model",
            registered_model_name=name,
            signature=signature(model),
            input_example=input_example(model, model_dir),
            onnx_execution_providers=["CPUExecutionProvider"],
            pip_requirements=PIP_REQUIREMENTS,
            save_as_external_data=False,
        )
        mlflow.log_artifacts(str(model_dir), artifact_path=BUNDLE)
        mlflow.log_artifact(str(report), artifact_path="report")
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()  # the tracking URI the caller set
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    # the model card: the version's description, the run's MODEL_CARD.md, its edge bundle's README.md
    chain = card_chain(task, p, model_dir) if chain is None else chain
    facts, measured = card_facts(task, p, name, version, model_dir, tags, chain), json.loads(report.read_text())
    card = model_card.markdown(measured, facts)
    client.update_model_version(name, version, description=description(card))
    client.log_text(run_id, card, MODEL_CARD)
    hf_card = model_card.hugging_face(measured, facts)
    log_edge_bundle(task, p, client, run_id, version, model_dir, report, tags, name, hf_card)
    return version


def signature(model):
    """The ONNX graph's inputs and outputs as an MLflow tensor signature: each one's name, element type and
    shape, a dimension the graph leaves free (batch, sequence, past length) as -1. Read from the graph, so it
    is every task's: a classifier's input_ids / attention_mask / token_type_ids and logits (a multitask model's
    logits_<task>), a decoder's cache inputs and outputs too."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def schema(values) -> Schema:
        return Schema([TensorSpec(tensor_dtype(v), tensor_shape(v), v.name) for v in values])

    return ModelSignature(inputs=schema(graph_inputs(model)), outputs=schema(model.graph.output))


def input_example(model, model_dir: Path) -> dict | None:
    """EXAMPLE_SENTENCE as the graph's inputs, tokenized by the folder's tokenizer.json: ids, attention mask,
    token types, positions from 0. An input the tokenizer does not give (a decoder's key/value cache) gets one
    position of zeros, masked out in the attention mask, which the model reads as an empty cache (MLflow's JSON
    example cannot hold a zero-length axis). None (and a printed reason) when the folder has no readable
    tokenizer: the version then has a signature and no example."""
    import numpy as np
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - an example is a courtesy: a version registers without one
        why = f"{path} is not a tokenizer ({err})" if path.is_file() else f"{model_dir} has no tokenizer.json"
        print(f"[register] no input example: {why}", flush=True)
        return None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encoded = tokenizer.encode(EXAMPLE_SENTENCE)
    given = {
        "input_ids": encoded.ids,
        "attention_mask": encoded.attention_mask,
        "token_type_ids": encoded.type_ids,
        "position_ids": list(range(len(encoded.ids))),
    }
    inputs = graph_inputs(model)
    cached = any(v.name not in given for v in inputs)
    example = {}
    for v in inputs:
        if v.name in given:
            row = ([0] if cached and v.name == "attention_mask" else []) + list(given[v.name])
            example[v.name] = np.array([row], dtype=tensor_dtype(v))
        else:  # batch 1, one cached position (masked out above)
            example[v.name] = np.zeros([d if d > 0 else 1 for d in tensor_shape(v)], dtype=tensor_dtype(v))
    return example


def graph_inputs(model) -> list:
    """The graph's inputs less its initializers (an older export lists its weights as inputs too)."""
    weights = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def tensor_dtype(value):
    import numpy as np
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


def tensor_shape(value) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)


def card_chain(task: Task, p: Params, model_dir: Path) -> dict[str, dict]:
    """The compression steps of a model card: each of CARD_CHAIN's stages the task has, with its own params
    section (the first it reads: teacher, distill, lm.prune, ...), for distill the shipped model's depth (its
    config.json), and for quantize what it shipped (the model folder's quantize_report.json: the variant chosen
    and the instruction set)."""
    chain = {}
    for name in CARD_CHAIN:
        stage = task.stages.get(name)
        if stage is not None:
            own = stage_config(p, stage.sections[:1])
            settings = next(iter(own.values()), {})
            chain[name] = settings if isinstance(settings, dict) else {stage.sections[0]: settings}
    # The student's depth as shipped: the distill stage may have trained a deeper one than `layers`
    # (`distill.deeper_layers`), so the params alone do not say it.
    config = model_dir / "config.json"
    if "distill" in chain and config.is_file():
        depth = json.loads(config.read_text()).get("num_hidden_layers")
        if depth is not None:
            chain["distill"] |= {"shipped.num_hidden_layers": depth}
    quantized = model_dir / "quantize_report.json"
    if "quantize" in chain and quantized.is_file():
        shipped = json.loads(quantized.read_text())
        chain["quantize"] |= {f"shipped.{k}": shipped[k] for k in ("chosen", "preset") if k in shipped}
    return chain


def card_facts(
    task: Task, p: Params, name: str, version: str, model_dir: Path, tags: dict[str, str], chain: dict[str, dict]
) -> model_card.About:
    """What a version's model card tells besides its report."""
    labels = model_dir / "labels.json"
    return model_card.About(
        name=name,
        version=version,
        data_source=tags.get(DATA_SOURCE_TAG) or data_source_id(p.data_source()),
        data_sha256=tags.get("data_sha256", ""),
        quality=task.judging.quality,
        chain=chain,
        labels=[str(label) for label in json.loads(labels.read_text())] if labels.is_file() else None,
    )


def description(card: str) -> str:
    """The card as a version's description: whole when MLflow keeps it, else cut, saying where the rest is."""
    if len(card) <= DESCRIPTION_CHARS:
        return card
    more = f"\n\n... (cut: the whole card is the run's {MODEL_CARD})\n"
    return card[: DESCRIPTION_CHARS - len(more)] + more


def log_edge_bundle(
    task: Task,
    p: Params,
    client,
    run_id: str,
    version: str,
    model_dir: Path,
    report: Path,
    tags: dict[str, str],
    name: str,
    card: str | None = None,
) -> str | None:
    """Package model_dir as the edge bundle of version `version` of `name` (with `card` as its README.md), log
    it as the run's `edge_bundle` artifact and tag the version with its manifest's sha256; returns that
    sha256. A folder that cannot be packaged (no tokenizer or labels) gets neither, and `serve-model
    models:/...` then refuses the version."""
    from components import bundle

    source = {
        "model_uri": f"models:/{name}/{version}",
        "name": name,
        "version": version,
        "run_id": run_id,
        "git_commit": tags.get("git_commit", ""),
        "data_sha256": tags.get("data_sha256", ""),
    }
    metrics = bundle_metrics(task, tags, json.loads(report.read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = bundle.package(model_dir, Path(tmp) / "edge", source, metrics, p.teacher.max_length, card=card)
        except bundle.BundleSourceError:
            return None
        client.log_artifacts(run_id, str(out), EDGE_BUNDLE)
        digest = bundle.manifest_sha256(out)
    client.set_model_version_tag(name, version, MANIFEST_TAG, digest)
    return digest


def log_warm_start(task: Task, p: Params, ws: Workspace, client, run_id: str, version: str) -> None:
    """Log what an incremental update of this version starts from (`Task.warm_start`) as the run's
    `warm_start/` artifact, and tag the version with the data it saw; before any alias moves, so every
    champion has one."""
    if task.warm_start is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tags = task.warm_start(p, ws, Path(tmp))
        client.log_artifacts(run_id, tmp, WARM_START)
    for key, value in tags.items():
        client.set_model_version_tag(p.registered_model_name(), version, key, value)


def bundle_metrics(task: Task, tags: dict[str, str], report: dict) -> dict:
    """The figures a bundle's manifest carries: the version's ratios to its teacher (its tags) and its final
    model's figures the task names (its report: quality, size, latency), as far as they are recorded."""
    ratios = {k: float(v) for k, v in tags.items() if k.startswith("final_vs_teacher.")}
    return ratios | task.bundle_metrics(report.get("models", {}).get("final") or {})


def champion_version(client, name: str):
    """The version the champion alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def version_metrics(client, name: str, version, task: Task) -> dict:
    """The quality figure of the task (`Judging.quality`), "size_bytes" of a version's final model and where
    the quality figure comes from ("data_sha256", "split"): from its tags, else from its report. A pipeline
    version from before the `metrics_split` tag measured on the test split; any other version without it,
    on a split unknown (None)."""
    key = task.judging.quality
    tags = version.tags
    if f"final.{key}" in tags and "final.size_bytes" in tags:
        legacy = METRICS_SPLIT if tags.get("source", "pipeline") == "pipeline" else None
        return {
            key: float(tags[f"final.{key}"]),
            "size_bytes": float(tags["final.size_bytes"]),
            "data_sha256": tags.get("data_sha256") or None,
            "split": tags.get("metrics_split", legacy),
        }
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(version.run_id, "report/compression_report.json", tmp)
        report = json.loads(Path(path).read_text())
    final = report["models"]["final"]
    return {
        key: None if final.get(key) is None else float(final[key]),
        "size_bytes": float(final["size_bytes"]),
        "data_sha256": report.get("dataset", {}).get("sha256") or None,
        "split": METRICS_SPLIT,
    }


def workspace_data_sha256(ws: Workspace) -> str | None:
    """The sha256 of the workspace's prepared data, as its reports record it; None when there is none."""
    if not (ws.prepared / "test.parquet").is_file():
        return None
    return prepared_sha256(ws.prepared)


def remeasure_champion(task: Task, p: Params, ws: Workspace, client, champion, candidate: dict) -> dict:
    """The champion's quality figure measured on the candidate's split of the workspace data, from its
    registered bundle; {} (and a printed reason) when that fails, so the check is skipped, not crashed."""
    key, split = task.judging.quality, candidate["split"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(client.download_artifacts(champion.run_id, BUNDLE, tmp))
            value = task.judging.remeasure(bundle, ws.prepared, split, p)
    except Exception as err:  # noqa: BLE001 - an unreadable champion must not stop a registration
        print(
            f"[register] champion version {champion.version} could not be re-measured on the {split} split: "
            f"{type(err).__name__}: {err}",
            flush=True,
        )
        return {}
    print(
        f"[register] champion version {champion.version} re-measured on the candidate's {split} split: {key} {value}",
        flush=True,
    )
    return {key: value, "data_sha256": candidate["data_sha256"], "split": split}


def other_data_source(candidate_tags: dict, champion_tags: dict) -> gate.GateDecision | None:
    """A refusal when the champion learned another data source than the candidate (their `data_source` tags
    differ): two datasets never share a champion, and no figure of one says which model is better on the
    other. None when they are the same source, or a version predates the tag."""
    mine, theirs = (tags.get(DATA_SOURCE_TAG) for tags in (candidate_tags, champion_tags))
    if not mine or not theirs or mine == theirs:
        return None
    note = (
        f"the champion learned data source {theirs!r}, this version {mine!r}: not compared; a model of other data "
        f"is registered under its own name (leave register.model_name unset, or give each data its own)"
    )
    return gate.GateDecision.of({"vs_champion.data_source": gate.Check(math.nan, math.nan, False, note)})


def judge(task: Task, p: Params, ws: Workspace, client, version, report: dict) -> gate.GateDecision:
    """The gate against the teacher (the checks of the version's report), and against the current champion when
    there is one (and it is another version), with the checks of the task (`Task.judging`). A champion of
    another data source is refused, not compared (`other_data_source`); the champion's quality figure is
    re-measured when it is not like the candidate's (see the module)."""
    name = version.name
    rules = task.judging
    settings = rules.settings(p)
    decision = rules.against_teacher(report, settings)
    champion = champion_version(client, name)
    if champion is not None and str(champion.version) != str(version.version):
        refused = other_data_source(version.tags, champion.tags)
        if refused is not None:
            return gate.combine(decision, refused)
        candidate, current = (version_metrics(client, name, v, task) for v in (version, champion))
        if gate.should_remeasure(candidate, current, workspace_data_sha256(ws)):
            current |= remeasure_champion(task, p, ws, client, champion, candidate)
        decision = gate.combine(decision, rules.against_champion(candidate, current, settings))
    return decision


def describe(decision: gate.GateDecision) -> str:
    """The failed checks, each with its value and threshold, or its note when it has no value."""

    def one(name: str) -> str:
        c = decision.checks[name]
        return f"{name}: {c.note}" if c.note else f"{name}: {c.value:.4g} vs threshold {c.threshold:.4g}"

    return "; ".join(one(k) for k in decision.failed())


def register(task: Task, p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    """The register stage of every task: log the final model as a new version, judge it, move the alias."""
    import mlflow

    from flows.tracking import tracking_uri

    report = json.loads(ws.report.read_text())
    run_id = getattr(tracker, "run_id", None)
    if run_id is None:
        raise RuntimeError("the register stage needs an MLflow tracker")
    mlflow.set_tracking_uri(tracking_uri(ws.root))
    client = tracker.client
    parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    tags = version_tags(task, p, ws, report, parent) | (lineage_tags(task, client, parent) if parent else {})
    name = p.registered_model_name()
    version = log_version(task, p, run_id, ws.final, ws.report, tags, name)
    log_warm_start(task, p, ws, client, run_id, version)
    decision = judge(task, p, ws, client, client.get_model_version(name, version), report)
    failed = decision.failed()
    alias = alias_for(decision.passed)
    move_alias(
        client,
        ws.root,
        name,
        version,
        alias,
        by="pipeline",
        reason="gate passed" if decision.passed else "gate failed: " + ", ".join(failed),
        failed_checks=failed,
    )
    result = {
        "model_name": name,
        "version": version,
        "alias": alias,
        "gate_passed": decision.passed,
        "run_id": run_id,
        "parent_run_id": parent,
        "model_uri": f"models:/{name}/{version}",
        "failed_checks": failed,
        "gate": decision.as_dict(),
    }
    ws.registration.write_text(json.dumps(result, indent=2))
    tracker.set_tags({"miniaturize.registered_version": version, "miniaturize.alias": alias})
    return StageResult(
        metrics={"version": float(version), "gate_passed": float(decision.passed)},
        outputs={"registration": ws.registration},
        info=result,
    )


def history_run(client, name: str, root: Path | None = None) -> str | None:
    """The run whose `alias_history/` artifacts record every alias move of the registered model `name`, in
    the experiment `miniaturize-registry` (apart from the pipeline runs). Created when `root` is given."""
    from flows import tracking

    experiment = client.get_experiment_by_name(REGISTRY_EXPERIMENT)
    if experiment is not None:
        found = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`miniaturize.alias_history` = '{name}'", max_results=1
        )
        if found:
            return found[0].info.run_id
    if root is None:
        return None
    experiment_id = tracking.experiment_id(client, root, REGISTRY_EXPERIMENT)
    run_id = tracking.start_run(
        client, experiment_id, f"alias-history-{name}", tags={"miniaturize.alias_history": name}
    )
    tracking.end_run(client, run_id, True)
    return run_id


def read_history(client, name: str) -> list[dict]:
    """Every recorded alias move of `name`, oldest first."""
    run_id = history_run(client, name)
    if run_id is None:
        return []
    events = []
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, HISTORY, tmp))
        for path in sorted(local.glob("*.json")):
            events.append(json.loads(path.read_text()))
    return events


def move_alias(
    client,
    root: Path,
    model_name: str,
    version: str,
    alias: str,
    reason: str,
    by: str,
    action: str = "set",
    forced: bool = False,
    failed_checks: list[str] | None = None,
) -> dict:
    """Point `alias` at `version`, and record the move on the version's tags and in the history."""
    record = event(alias, version, action, by, reason, forced, failed_checks)
    client.set_registered_model_alias(model_name, alias, version)
    for key, value in (
        ("set_at", record["at"]),
        ("reason", reason),
        ("by", by),
        ("forced", str(forced).lower()),
        ("action", action),
    ):
        client.set_model_version_tag(model_name, version, f"alias.{alias}.{key}", value)
    run_id = history_run(client, model_name, root)
    with tempfile.TemporaryDirectory() as tmp:
        # one file per move, named by time: artifacts are only ever added, never rewritten
        path = Path(tmp) / f"{time.time_ns():020d}-{alias}-v{version}.json"
        path.write_text(json.dumps(record, indent=2))
        client.log_artifact(run_id, str(path), HISTORY)
    return record


def settle_version(
    tracker: Tracker, root: Path, model_name: str, version: str, decision: gate.GateDecision, why: str, by: str
) -> str:
    """A continuation's (update, federation) last step: @champion when its gate passed, else @challenger, the move
    recorded with `why`; the run tagged with the version and alias. Returns the alias."""
    alias = alias_for(decision.passed)
    move_alias(tracker.client, root, model_name, version, alias, reason=why, by=by, failed_checks=decision.failed())
    tracker.set_tags({"miniaturize.registered_version": version, "miniaturize.alias": alias})
    return alias


def write_version_report(folder: Path, version: str, alias: str, report: dict, markdown: str, tracker: Tracker) -> Path:
    """`<folder>/v<version>.json` (the report with its version and alias) and `.md`, logged on the run; the
    markdown's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"v{version}.json").write_text(json.dumps(report | {"version": version, "alias": alias}, indent=2))
    md = folder / f"v{version}.md"
    md.write_text(markdown)
    tracker.log_artifact(md)
    return md


def promote(task: Task, p: Params, ws: Workspace, version: str, force: bool = False, reason: str | None = None) -> dict:
    """Make `version` the champion through the gate (teacher ratios and the current champion), judged with the
    current gate config. `force` overrides a failed gate; the override and its reason are recorded."""
    from flows.tracking import client as make_client

    client = make_client(ws.root)
    name = p.registered_model_name()
    found = client.get_model_version(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(found.run_id, "report/compression_report.json", tmp))
        report = json.loads(local.read_text())
    decision = judge(task, p, ws, client, found, report)
    failed = decision.failed()
    if failed and not force:
        raise GateRejected(f"version {version} of {name} fails the gate ({describe(decision)}); champion unchanged")
    why = reason or ("manual promotion, gate passed" if not failed else "")
    if failed:
        why = f"forced past failed checks {', '.join(failed)}: {reason}"
    previous = champion_version(client, name)
    move_alias(
        client,
        ws.root,
        name,
        version,
        CHAMPION,
        reason=why,
        by=who("miniaturize promote"),
        forced=bool(failed),
        failed_checks=failed,
    )
    return {
        "model_name": name,
        "version": version,
        "alias": CHAMPION,
        "checks": decision.as_dict(),
        "forced": bool(failed),
        "previous": str(previous.version) if previous else None,
    }


def rollback(p: Params, ws: Workspace, reason: str) -> dict:
    """Move the champion back to the previous champion, by the recorded history."""
    from flows.tracking import client as make_client

    client = make_client(ws.root)
    name = p.registered_model_name()
    current = champion_version(client, name)
    target = rollback_target(read_history(client, name), str(current.version) if current else None)
    move_alias(
        client,
        ws.root,
        name,
        target,
        CHAMPION,
        reason=f"rollback from version {current.version}: {reason}",
        by=who("miniaturize rollback"),
        action="rollback",
    )
    return {"model_name": name, "version": target, "alias": CHAMPION, "from": str(current.version)}


def lineage(task: Task, p: Params, ws: Workspace, version: str, model: str | None = None) -> dict:
    """Where a registered version of `model` (default: the params' model) comes from: commit, data, params,
    teacher run, every stage key and run, and its alias moves."""
    from flows.tracking import client as make_client

    client = make_client(ws.root)
    name = model or p.registered_model_name()
    found = client.get_model_version(name, version)
    tags = found.tags
    stages = [
        {"stage": s, "key": tags.get(f"lineage.{s}.key", ""), "run": tags.get(f"lineage.{s}.run", "")}
        for s in task.stages
        if f"lineage.{s}.key" in tags
    ]
    aliases = [e for e in read_history(client, name) if e["version"] == str(version)]
    return {
        "updates": update_chain(client, name, found),
        "batches": json.loads(tags.get("incremental.batches") or "[]"),
        "model_name": name,
        "version": str(version),
        "model_run": found.run_id,
        "git_commit": tags.get("git_commit", ""),
        "data_sha256": tags.get("data_sha256", ""),
        "params_hash": tags.get("params_hash", ""),
        "pipeline_run": tags.get("parent_run_id", ""),
        "teacher_run": tags.get("teacher_run_id", ""),
        "source": tags.get("source", "pipeline"),
        "aliases_now": list(found.aliases),
        "stages": stages,
        "alias_history": aliases,
    }


def update_chain(client, name: str, version) -> list[dict]:
    """The version and its parents through incremental updates (`incremental.parent_version` tags), newest
    first, back to the full run they started from: each with the batch it learned and that batch's data."""
    chain = []
    while version is not None and len(chain) < 1000:
        tags = version.tags
        chain.append(
            {
                "model_name": version.name,
                "version": str(version.version),
                "kind": "update" if tags.get("incremental.kind") == "update" else "full run",
                "batch": tags.get("incremental.batch", "-"),
                "data_sha256": tags.get("data_sha256", ""),
                "aliases": list(version.aliases),
                "forgetting_points": tags.get("incremental.forgetting_points"),
            }
        )
        parent = tags.get("incremental.parent_version")
        name = tags.get("incremental.parent_model") or name  # an ablation chain may start from another model
        version = client.get_model_version(name, parent) if parent else None
    return chain


def find_version(client, model: str):
    """(name, version) of models:/NAME@ALIAS or models:/NAME/VERSION."""
    ref = model.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, client.get_model_version_by_alias(name, alias)
    name, number = ref.rsplit("/", 1)
    return name, client.get_model_version(name, number)


def bundle_source(
    p: Params, ws: Workspace, model: str | None, download_to: Path, tasks: dict[str, Task]
) -> tuple[Path, dict, dict]:
    """(model folder, source, metrics) for `miniaturize package`: a registered version given as
    models:/NAME@ALIAS or models:/NAME/VERSION (default: the champion), downloaded from MLflow, or a
    local model folder. The figures are those of the task its report names (`tasks`: name -> record),
    or of the params' task."""
    from flows.tracking import client as make_client

    model = model or f"models:/{p.registered_model_name()}@{CHAMPION}"
    if not model.startswith("models:/"):
        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"{model} is neither a models:/ URI nor a model folder")
        return path, {"path": str(path.resolve())}, {}
    client = make_client(ws.root)
    name, version = find_version(client, model)
    folder = Path(client.download_artifacts(version.run_id, BUNDLE, str(download_to)))
    try:
        report = json.loads(
            Path(
                client.download_artifacts(version.run_id, "report/compression_report.json", str(download_to))
            ).read_text()
        )
    except Exception:  # noqa: BLE001 - a version without a report still packages; its tags carry the ratios
        report = {}
    metrics = bundle_metrics(tasks.get(report.get("task")) or tasks[p.task], version.tags, report)
    source = {
        "model_uri": model,
        "name": name,
        "version": str(version.version),
        "run_id": version.run_id,
        "git_commit": version.tags.get("git_commit", ""),
        "data_sha256": version.tags.get("data_sha256", ""),
    }
    return folder, source, metrics


def registered_bundle(root: Path, model: str, download_to: Path) -> tuple[Path, str]:
    """(edge bundle folder, manifest sha256 to expect) of a registered version, models:/NAME@ALIAS or
    models:/NAME/VERSION: the bundle logged at registration, downloaded, and its `bundle.manifest_sha256`
    tag. BundleNotRegistered for a version registered without one."""
    from flows.tracking import client as make_client

    client = make_client(root)
    name, version = find_version(client, model)
    expected = version.tags.get(MANIFEST_TAG)
    if not expected:
        raise BundleNotRegistered(
            f"{model} (version {version.version} of {name}) has no {MANIFEST_TAG} tag: it "
            "was registered without an edge bundle; package it and pin the manifest sha256 "
            "that `miniaturize package` prints"
        )
    folder = Path(client.download_artifacts(version.run_id, EDGE_BUNDLE, str(download_to)))
    return folder, expected
