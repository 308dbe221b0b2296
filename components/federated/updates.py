"""What travels in a federation, and the server's pure decisions about it: numpy in, numpy out, no Flower.

A client receives the student's trainable weights (`components.federated.local.trainable_names`) in the wire
dtype (fp16 by default), fine-tunes them on its shard, and sends back its *update*: its weights minus the
weights it received, in the wire dtype. A delta holds small numbers around zero, so fp16 loses nothing that
matters (its relative precision is ~5e-4 of each value), where fp16 *weights* would round the start too.

The server keeps the global weights in fp32. For each round it:
1. checks every update (`check_update`): same names and shapes as the global weights, every value finite,
   and a norm at most `max_norm_ratio` times the global weights' norm; then, with three updates or more,
   refuses any whose norm exceeds `max_median_factor` times the round's median (`outliers`), which catches
   an update scaled by 1e3 that still passes a loose absolute bound;
2. averages the accepted updates weighted by each client's training rows (`weighted_mean`, FedAvg's rule)
   and adds the mean to the global weights (`apply_update`).
A round with fewer accepted updates than the configured minimum keeps the global weights as they were.

Checkpoints (`save_checkpoint`, `load_checkpoint`): the global weights and the rounds' records after each
completed round, written atomically, so a restarted server resumes from the last completed round.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]

WIRE_DTYPES = {"float16": np.float16, "float32": np.float32}


# ---------------------------------------------------------------- the payload


def to_wire(arrays: Arrays, dtype: str) -> Arrays:
    """The arrays in the wire dtype (`WIRE_DTYPES` key), contiguous."""
    kind = WIRE_DTYPES[dtype]
    return {name: np.ascontiguousarray(value, dtype=kind) for name, value in arrays.items()}


def to_float32(arrays: Arrays) -> Arrays:
    return {name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}


def payload_bytes(arrays: Arrays) -> int:
    """Bytes of the arrays' values (the serialised message adds ~100 bytes of header per array)."""
    return int(sum(value.nbytes for value in arrays.values()))


def difference(local: Arrays, start: Arrays) -> Arrays:
    """local - start, in fp32: a client's update."""
    return {name: np.asarray(local[name], np.float32) - np.asarray(start[name], np.float32) for name in start}


def global_norm(arrays: Arrays) -> float:
    """The L2 norm of all the arrays taken as one vector (fp64 sums, so fp16 inputs do not overflow)."""
    total = sum(float(np.sum(np.square(value, dtype=np.float64))) for value in arrays.values())
    return math.sqrt(total)


# ---------------------------------------------------------------- deciding about an update


@dataclass(frozen=True)
class Verdict:
    """Whether an update may join the aggregate, and why not."""

    accepted: bool
    reason: str = ""
    norm_ratio: float = float("nan")  # ||update|| / ||global weights||


def check_update(update: Arrays, global_weights: Arrays, max_norm_ratio: float) -> Verdict:
    """Accept an update only with the global weights' names and shapes, finite values everywhere, and a norm at
    most `max_norm_ratio` times the global weights' norm."""
    missing, extra = set(global_weights) - set(update), set(update) - set(global_weights)
    if missing or extra:
        return Verdict(
            False,
            f"names differ from the global weights (missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})",
        )
    for name, value in update.items():
        if value.shape != global_weights[name].shape:
            return Verdict(False, f"{name} has shape {value.shape}, expected {global_weights[name].shape}")
    bad = [name for name, value in update.items() if not np.all(np.isfinite(value))]
    if bad:
        return Verdict(False, f"non-finite values (NaN or inf) in {len(bad)} arrays, e.g. {bad[0]}")
    ratio = global_norm(update) / max(global_norm(global_weights), 1e-12)
    if not math.isfinite(ratio):
        return Verdict(False, "its norm overflows", ratio)
    if ratio > max_norm_ratio:
        return Verdict(False, f"norm {ratio:.3g} x the global weights', above the bound {max_norm_ratio:g}", ratio)
    return Verdict(True, "", ratio)


def outliers(norm_ratios: dict[str, float], max_median_factor: float, min_updates: int = 3) -> dict[str, str]:
    """Updates (by client) whose norm is above `max_median_factor` times the median of the round's norms, with
    the reason; none when fewer than `min_updates` updates came (a median of two says nothing)."""
    if len(norm_ratios) < min_updates:
        return {}
    median = float(np.median(list(norm_ratios.values())))
    limit = max_median_factor * median
    return {
        client: f"norm {ratio:.3g} is {ratio / max(median, 1e-12):.1f} x the round's median {median:.3g}, "
        f"above {max_median_factor:g} x"
        for client, ratio in norm_ratios.items()
        if ratio > limit
    }


# ---------------------------------------------------------------- aggregating


def weighted_mean(updates: list[Arrays], weights: list[float]) -> Arrays:
    """FedAvg's rule: the mean of the updates weighted by `weights` (each client's training rows), in fp32."""
    if not updates:
        raise ValueError("no updates to average")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights sum to {total}; each must be a positive row count")
    mean = {name: np.zeros(value.shape, np.float32) for name, value in updates[0].items()}
    for update, weight in zip(updates, weights):
        for name, value in update.items():
            mean[name] += np.asarray(value, np.float32) * np.float32(weight / total)
    return mean


def aggregation_weights(rows: dict[str, float], weighting: str) -> dict[str, float]:
    """Each accepted client's weight in the mean: its training rows ("rows", FedAvg's rule) or 1 ("equal").

    With every client running whole local epochs, a client's update grows with its rows, and the rows-weighted
    mean counts it twice over: FedAvg then settles where sum(share^2 x loss) is least, not the union's loss
    (the objective inconsistency of Wang et al. 2020). Equal weights count each client's rows once."""
    if weighting == "rows":
        return dict(rows)
    if weighting == "equal":
        return dict.fromkeys(rows, 1.0)
    raise ValueError(f"unknown weighting {weighting!r}: rows or equal")


def apply_update(global_weights: Arrays, mean_update: Arrays, server_lr: float = 1.0) -> Arrays:
    """The global weights moved by `server_lr` x the mean update (FedAvg with a server learning rate, Reddi et al.
    2021; 1.0 is plain FedAvg)."""
    return {
        name: np.asarray(value, np.float32) + np.float32(server_lr) * mean_update[name]
        for name, value in global_weights.items()
    }


# ---------------------------------------------------------------- checkpoints


CHECKPOINT_WEIGHTS = "global.npz"
CHECKPOINT_STATE = "state.json"


def save_checkpoint(folder: Path, key: str, completed_round: int, weights: Arrays, rounds: list[dict]) -> None:
    """The global weights after `completed_round` and every round's record so far, under the federation's `key`
    (what the weights depend on: the start, the config, the shards). Each file is written to a temporary name
    and renamed, the state file last: a crash mid-write leaves the previous checkpoint whole."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ("tmp-" + CHECKPOINT_WEIGHTS)
    with open(tmp, "wb") as handle:
        np.savez(handle, **weights)
    os.replace(tmp, folder / CHECKPOINT_WEIGHTS)
    state = {"key": key, "completed_round": completed_round, "rounds": rounds}
    tmp_state = folder / ("tmp-" + CHECKPOINT_STATE)
    tmp_state.write_text(json.dumps(state, indent=2))
    os.replace(tmp_state, folder / CHECKPOINT_STATE)


def load_checkpoint(folder: Path, key: str) -> tuple[int, Arrays, list[dict]] | None:
    """(last completed round, global weights, rounds' records) of a checkpoint with the same `key`, else None
    (none written, or written by a federation with other settings, which must not be resumed)."""
    state_file, weights_file = folder / CHECKPOINT_STATE, folder / CHECKPOINT_WEIGHTS
    if not (state_file.is_file() and weights_file.is_file()):
        return None
    state = json.loads(state_file.read_text())
    if state.get("key") != key:
        return None
    with np.load(weights_file) as saved:
        weights = {name: saved[name] for name in saved.files}
    return int(state["completed_round"]), weights, list(state["rounds"])


def verdict_record(client: str, verdict: Verdict) -> dict:
    return {"client": client} | asdict(verdict)
