"""The incremental-learning demonstration: the vaderSentiment archive's four rated sources as a stream.

    miniaturize incremental-demo [--profile smoke] [--scratch-seeds 13,14,15] [--scratch-steps last]
                                 [--scratch-set prune.accuracy_budget_points=null]
                                                                        # in a new, empty project folder

1. A full pipeline run on the movie snippets alone (`vader-movie`, no transfer set: the first model sees no
   sentence of the later sources, not even unlabelled), registered as `<name>-stream`, where `<name>` is the
   params' model name (`Params.registered_model_name`: miniaturize-sentiment by default).
2. Product reviews, tweets and editorials arrive as three updates (`flows.update`, method `replay_kd`), each
   warm-started from the version before it.
3. The ablation: the same three updates with method `naive` (the new batch alone: no replay, no
   distillation), from the same first version, registered as `...-stream-naive`.
4. The reference: after each update, the whole pipeline from scratch on the union of every batch so far,
   with the same compression settings and the batches' own splits (`split` column), so every model is tested
   on the same sentences; on the last union once per seed of `--scratch-seeds`. Registered as
   `...-stream-scratch`. With `--scratch-steps last` only the last union is run from scratch (two
   from-scratch runs fewer at the default scale); each update's cost is then set against the first full
   run, a from-scratch run on less data (an upper bound on the ratio).
   `--scratch-set KEY=VALUE` changes the from-scratch runs' params only: with the same compression
   settings the pipeline from scratch chooses its student's depth and pruning again on all the data (its
   accuracy budget), so its model may be larger than the one the updates carry forward;
   `--scratch-set prune.accuracy_budget_points=null --scratch-set 'distill.deeper_layers=[]'` prunes it by
   the fixed ratios, to the first run's structure, for a comparison at the same size.

The first run and the from-scratch runs share the compression settings of the params, without the extra
seeds and the distillation ablation (they would only add time). Each model's accuracy on every batch's test
split, its wall time and training examples go to `reports/incremental/stream.json`, with a Markdown table
and a plot (accuracy per batch after each update, for incremental, naive fine-tuning and from-scratch;
`components.classification.stream_report`). Each finished unit (the first run, an update, a from-scratch
run) is recorded in `reports/incremental/progress.json` as it ends: the same command in the same folder
with the same settings resumes a demonstration that was stopped, and a stopped pipeline run resumes from its
last completed stage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from prefect import flow

from components.config import Params
from flows.pipeline import pipeline
from flows.run_log import printed_to_run_log
from flows.tasks.classification import TASK
from flows.update import update

STREAM = ("vader-movie", "vader-amazon", "vader-tweets", "vader-nyt")
TRAINING_STAGES = ("finetune", "distill", "prune")


def with_settings(p: Params, **updates) -> Params:
    """`p` with dotted keys replaced, validated again (e.g. data__source -> data.source)."""
    from components.config import build_params, set_dotted

    tree = p.as_dict()
    for dotted, value in updates.items():
        set_dotted(tree, dotted.replace("__", "."), value)
    return build_params(tree)


def scratch_params(p: Params, settings: list[str]) -> Params:
    """`p` with `key=value` overrides (`--scratch-set`), validated again; raises ConfigError."""
    from components.config import build_params

    return build_params(p.as_dict(), overrides=settings) if settings else p


def accuracies(model: Path, batches: dict[str, Path], p: Params) -> dict[str, float | None]:
    from components.classification.evaluate import split_accuracy

    return {
        name: split_accuracy(model, folder, "test", p.evaluate.threads, p.teacher.max_length)
        for name, folder in batches.items()
    }


def pipeline_examples(outcome: dict) -> int:
    """Training rows processed by a pipeline run's training stages (a skipped stage counts its recorded run)."""
    return int(sum(outcome["stages"][name]["metrics"].get("examples", 0) for name in TRAINING_STAGES))


def union_file(batches: dict[str, Path], out: Path) -> Path:
    """Every batch's splits in one file, each row keeping its split (`split` column) and its batch."""
    frames = []
    for name, folder in batches.items():
        for split in ("train", "validation", "test"):
            frame = pd.read_parquet(folder / f"{split}.parquet")[["text", "label"]]
            frames.append(frame.assign(split=split, batch=name))
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_parquet(out, index=False)
    return out


def batch_folders(version: str, model_name: str, client, into: Path) -> dict[str, Path]:
    """The batches a version saw (its warm start's `batches/`), downloaded, in the order they arrived."""
    from components.classification.update import earlier_batches
    from flows import registry

    found = client.get_model_version(model_name, version)
    # the batches only, not the teacher and student beside them; the artifact keeps its path
    batches = Path(client.download_artifacts(found.run_id, registry.WARM_START + "/batches", str(into)))
    return earlier_batches(batches.parent)


class Progress:
    """The demonstration's finished units (the first run, each update, each from-scratch run), kept in a file
    as each one ends, so that a demonstration stopped part-way (hours at the default scale) resumes where it
    stopped: `miniaturize incremental-demo` again in the same folder. Each unit is kept with the key of the
    settings it ran with (`key`): a unit whose settings changed runs again, the others are reused (a change
    to the `incremental` section re-runs the updates, not the full runs; more `--scratch-seeds` run only the
    new seeds). A different stream (`settings`) starts it afresh."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        saved = json.loads(path.read_text()) if path.is_file() else {}
        # only the settings given now must match: a record of older runs may hold more keys
        same = bool(saved) and all(saved.get("settings", {}).get(k) == v for k, v in settings.items())
        self.done: dict = saved.get("done", {}) if same else {}
        self.keys: dict = saved.get("keys", {}) if same else {}
        if self.done:
            print(f"[stream] resuming: {len(self.done)} units recorded ({', '.join(self.done)})", flush=True)

    def unit(self, name: str, key: str, work) -> dict:
        """The result of unit `name`: as recorded with settings `key`, or `work()` now, recorded before it is
        returned."""
        if name not in self.done or self.keys.get(name) != key:
            self.done[name], self.keys[name] = work(), key
            self.path.parent.mkdir(parents=True, exist_ok=True)
            state = {"settings": self.settings, "keys": self.keys, "done": self.done}
            self.path.write_text(json.dumps(state, indent=2))
        return self.done[name]


def run_key(p: Params, *context: str) -> str:
    """What a pipeline run's result depends on: every section but `incremental` (which only updates read),
    plus `context`."""
    from components.config import section_hash

    tree = {k: v for k, v in p.as_dict().items() if k != "incremental"}
    return section_hash({"params": tree, "context": list(context)})


def update_key(p: Params, start: str) -> str:
    """What an update's result depends on: every section, and the version it starts from."""
    from components.config import section_hash

    return section_hash({"params": p.as_dict(), "start": start})


def timed_run(p: Params, root: Path, run_name: str) -> tuple[dict, float]:
    """A pipeline run and its wall seconds."""
    started = time.perf_counter()
    outcome = pipeline(p, root=str(root), run_name=run_name)
    return outcome, time.perf_counter() - started


def entry(p: Params, root: Path, outcome: dict, seconds: float, batches: dict[str, Path], learned: str) -> dict:
    """What the demonstration keeps of a pipeline run: its version, the batch it learned last, its final
    model's accuracy on the test split of every batch of `batches`, its size (weight files), its cost, and
    the training stages it reused from an earlier run (unchanged inputs: their examples are the recorded
    run's, their time is not in `seconds`)."""
    from components.kit.modeling import dir_size_bytes

    final = TASK.workspace(root).final
    return {
        "version": outcome["registration"]["version"],
        "learned": learned,
        "accuracy": accuracies(final, batches, p),
        "size_bytes": dir_size_bytes(final),
        "seconds": seconds,
        "examples": pipeline_examples(outcome),
        "reused": [name for name in TRAINING_STAGES if outcome["stages"][name].get("cache_hit")],
    }


def first_run(p: Params, root: Path, client) -> dict:
    """The first full run, measured on the batch it learned (read back from its version's warm start)."""
    import tempfile

    outcome, seconds = timed_run(p, root, "stream-0-full-run")
    with tempfile.TemporaryDirectory() as tmp:
        batches = batch_folders(outcome["registration"]["version"], p.registered_model_name(), client, Path(tmp))
        return entry(p, root, outcome, seconds, batches, next(iter(batches)))


def scratch_run(p: Params, root: Path, client, model: str, version: str, step: int) -> dict:
    """The pipeline from scratch (params `p`) on the union of the batches incremental version `version` of
    `model` has seen, their own splits kept, measured on each batch's test split."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        batches = batch_folders(version, model, client, Path(tmp))
        data = union_file(batches, root / "data" / "stream" / f"union-{step}.parquet")
        p = with_settings(p, data__source=data.relative_to(root).as_posix())
        outcome, seconds = timed_run(p, root, f"stream-{step}-scratch-seed{p.seed}")
        return entry(p, root, outcome, seconds, batches, next(reversed(batches)))


def first_batch_paired(p: Params, client, names: dict[str, str], first: str, last: dict[str, str]) -> dict:
    """Each method's last version (`last`: {method: version of `names[method]`}) against the first run (version
    `first` of the incremental model) on the first batch's test split, sentence by sentence
    (`forgetting.paired_change`): whether the first batch's change after the stream is more than its few
    hundred test sentences move by chance."""
    import tempfile

    from components.classification.evaluate import split_correct
    from components.kit.forgetting import paired_change
    from flows import registry

    with tempfile.TemporaryDirectory() as tmp:
        first_batch = next(iter(batch_folders(first, names["incremental"], client, Path(tmp) / "first").values()))

        def correct(model: str, version: str):
            found = client.get_model_version(model, version)
            into = Path(tmp) / model / version
            into.mkdir(parents=True)
            bundle = Path(client.download_artifacts(found.run_id, registry.BUNDLE, str(into)))
            return split_correct(bundle, first_batch, "test", p.evaluate.threads, p.teacher.max_length)

        start = correct(names["incremental"], first)
        return {method: paired_change(start, correct(names[method], version)) for method, version in last.items()}


def update_run(p: Params, root: Path, source: str, step: int, method: str, start: str) -> dict:
    return updated(update(p, data=source, root=str(root), run_name=f"stream-{step}-{method}", start=start))


SCRATCH_STEPS = ("all", "last")


def scratch_seeds_at(step: int, last: int, seeds: list[int], scratch_steps: str) -> list[int]:
    """The seeds of the from-scratch runs after update `step`: every seed after the last update, the first
    one after the others (none with `scratch_steps` "last")."""
    if step == last:
        return seeds
    return seeds[:1] if scratch_steps == "all" else []


def run_demo(
    params: Params,
    root: Path,
    scratch_seeds: list[int],
    stream: tuple[str, ...] = STREAM,
    scratch_steps: str = "all",
    scratch_settings: list[str] | None = None,
) -> dict:
    """The stream (see the module); `scratch_settings`: `key=value` overrides of the from-scratch runs' params
    only (`--scratch-set`, e.g. the first run's pruning ratios to compare at its size)."""
    from functools import partial

    from flows import tracking

    base = params.registered_model_name() + "-stream"
    names = {"incremental": base, "naive": base + "-naive", "scratch": base + "-scratch"}
    settings = {"stream": list(stream)}  # each from-scratch unit is keyed by its seed
    progress = Progress(TASK.workspace(root).reports / "incremental" / "progress.json", settings)
    client = tracking.client(root)

    # The first full run and every from-scratch run: the same compression settings, without the extra
    # seeds and the distillation ablation (the seed spread is the from-scratch runs' own)
    same = {"data__transfer": False, "seeds__extra": [], "distill__ablation": False}
    first = with_settings(params, data__source=stream[0], register__model_name=names["incremental"], **same)
    scratch_base = scratch_params(params, scratch_settings or [])
    head = progress.unit("0/full-run", run_key(first), partial(first_run, first, root, client))
    steps = [{"step": 0, "learned": head["learned"], "incremental": head, "naive": head, "scratch": head}]

    previous = {m: f"models:/{names['incremental']}/{head['version']}" for m in ("incremental", "naive")}
    for step, source in enumerate(stream[1:], start=1):
        row: dict = {"step": step}
        for method in ("incremental", "naive"):
            p = with_settings(
                params,
                register__model_name=names[method],
                incremental__method="replay_kd" if method == "incremental" else "naive",
            )
            work = partial(update_run, p, root, source, step, method, previous[method])
            row[method] = progress.unit(f"{step}/{method}", update_key(p, previous[method]), work)
            previous[method] = f"models:/{names[method]}/{row[method]['version']}"
            row["learned"] = row[method]["learned"]
        # the reference: the pipeline from scratch on every batch so far
        runs = {}
        for seed in scratch_seeds_at(step, len(stream) - 1, scratch_seeds, scratch_steps):
            p = with_settings(scratch_base, register__model_name=names["scratch"], seed=seed, **same)
            work = partial(scratch_run, p, root, client, names["incremental"], row["incremental"]["version"], step)
            runs[seed] = progress.unit(f"{step}/scratch/{seed}", run_key(p, source), work)
        row["scratch"] = mean_of_seeds(runs) if runs else None
        steps.append(row)
        scratch = f"{mean(row['scratch']['accuracy']):.4f}" if runs else "not run at this step"
        print(
            f"[stream] after {row['learned']}: mean accuracy incremental "
            f"{mean(row['incremental']['accuracy']):.4f}, naive {mean(row['naive']['accuracy']):.4f}, "
            f"from scratch {scratch}",
            flush=True,
        )
    last = {m: str(steps[-1][m]["version"]) for m in ("incremental", "naive")}
    return {
        "stream": list(stream),
        "models": names,
        "first_batch_paired": first_batch_paired(params, client, names, str(head["version"]), last),
        "scratch_seeds": scratch_seeds,
        "scratch_steps": scratch_steps,
        "scratch_settings": list(scratch_settings or []),
        "steps": steps,
    }


def updated(done: dict) -> dict:
    """What the demonstration keeps of an update: its version, alias (and the gate's reason when it refused),
    accuracy per batch, forgetting, its final model's size, cost."""
    report = done["report"]
    return {
        "version": done["version"],
        "alias": done["alias"],
        "gate_reason": None if report["gate"]["passed"] else report["reason"],
        "learned": done["batch"],
        "accuracy": {r["batch"]: r["after"] for r in report["per_batch"]},
        "forgetting_points": report["forgetting_points"],
        "size_bytes": report["models"]["final"]["size_bytes"],
        "seconds": report["cost"]["seconds"],
        "examples": report["cost"]["examples"],
        "wordpieces_restored": report["wordpieces_restored"],
    }


def mean(accuracy: dict[str, float | None]) -> float:
    values = [v for v in accuracy.values() if v is not None]
    return sum(values) / len(values) if values else float("nan")


def mean_or_none(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def mean_of_seeds(runs: dict[int, dict]) -> dict:
    """The from-scratch figures averaged over seeds, each seed's kept under `seeds`. The wall time is the mean
    of the seeds that trained every stage themselves, where any did (a seed that reused a stage's outputs
    took less time than its model cost)."""
    first = next(iter(runs.values()))
    timed = [r for r in runs.values() if not r.get("reused")] or list(runs.values())
    return {
        "learned": first["learned"],
        "accuracy": {b: sum(r["accuracy"][b] for r in runs.values()) / len(runs) for b in first["accuracy"]},
        "seconds": sum(r["seconds"] for r in timed) / len(timed),
        "reused": sorted({name for r in timed for name in r.get("reused", [])}),
        "examples": sum(r["examples"] for r in runs.values()) / len(runs),
        # a run recorded before sizes were kept has none: the mean is then unknown
        "size_bytes": mean_or_none([r.get("size_bytes") for r in runs.values()]),
        "seeds": {str(seed): r for seed, r in runs.items()},
    }


def write(results: dict, reports: Path) -> list[Path]:
    from components.classification import stream_report

    reports.mkdir(parents=True, exist_ok=True)
    summary = stream_report.summarise(results)
    (reports / "stream.json").write_text(json.dumps(results | {"summary": summary}, indent=2))
    (reports / "stream.md").write_text(stream_report.render_markdown(results, summary))
    stream_report.save_plot(results, reports / "stream.png")
    return [reports / "stream.json", reports / "stream.md", reports / "stream.png"]


# Prints reach the Prefect run log through `printed_to_run_log`, standard output unchanged (flows/run_log.py).
@flow(name="miniaturize-incremental-demo", log_prints=False)
def demo(
    params: Params,
    root: str = ".",
    scratch_seeds: list[int] | None = None,
    scratch_steps: str = "all",
    scratch_settings: list[str] | None = None,
) -> dict:
    """The whole demonstration in the project folder `root`; returns the results and the files written."""
    root_path = Path(root).resolve()
    with printed_to_run_log():
        results = run_demo(
            params,
            root_path,
            list(scratch_seeds or [params.seed]),
            scratch_steps=scratch_steps,
            scratch_settings=scratch_settings,
        )
    files = write(results, TASK.workspace(root_path).reports / "incremental")
    return {"results": results, "files": [str(f) for f in files]}
