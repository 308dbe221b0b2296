"""The Flower ServerApp of a federation: Flower's own FedAvg (or FedProx) strategy and round loop
(`Strategy.start`), with three additions, each a small override and no loop of our own:

- `Robust` (a FedAvg/FedProx subclass) sends the global weights in the wire dtype, checks every update
  before it joins the aggregate (`components.federated.updates.check_update`, `outliers`: NaN, inf, a norm
  out of bounds are refused, logged and left out) and adds the accepted updates' row-weighted mean to the
  fp32 global weights; a round with fewer accepted updates than the minimum keeps the global weights;
- `QuorumGrid` wraps Flower's Grid so that a round's replies are collected until every client answered, or
  the minimum has answered and the grace passed (`straggler_grace_s`, or `straggler_grace_factor` x the time
  the minimum took, whichever is longer), or `round_timeout_s`: a client killed mid-round does not hold the
  federation up once enough clients have answered, and a client with more data than the rest is waited for;
- after the last round, when `calibrate_head` is set, one query message (`query.head_statistics`) asks every
  client for the statistics of its classifier inputs per class, and the classifier layer is refitted to
  them (`calibrate`, `components.federated.head`: CCVR); statistics that are not finite or not of the
  model's shapes are refused and logged, and with fewer usable answers than `min_clients` the layer stays;
- the end of each round (Flower's `evaluate_fn` hook) measures the global weights on the pooled test set when
  the server has one, checkpoints them with every round's record (`save_checkpoint`), and rewrites
  `rounds.json`; a restarted server resumes from the last completed round (`load_checkpoint`).

It runs in Flower's `flwr-serverapp` process (started by the SuperLink for `flwr run`), reads its settings
from the JSON file the run config names (`settings-file`, written by the launcher: `server_settings`), and
writes into its `out-dir`: rounds.json, global.npz (the final global weights) and done.json (the summary, with
the head calibration's record, last).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from components.federated import updates
from components.federated.config import FederatedConfig

WARNING, INFO = 30, 20
app = ServerApp()


def decode(record: ArrayRecord) -> updates.Arrays:
    return {name: array.numpy() for name, array in record.items()}


def encode(arrays: updates.Arrays) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def client_name(message: Message) -> str:
    """The name a client gives itself (its node config's `name`), else its node id."""
    named = message.content.config_records.get("client")
    return str(named["name"]) if named and "name" in named else f"node-{message.metadata.src_node_id}"


def shard_hash(message: Message) -> str:
    named = message.content.config_records.get("client")
    return str(named.get("shard-sha256", "")) if named else ""


# ---------------------------------------------------------------- replies: until everyone, or a quorum and grace


class QuorumGrid(Grid):
    """Flower's Grid with one change: `send_and_receive` returns once every message is answered, or once
    `quorum` error-free replies are in and the grace passed, or at the timeout. The grace is `grace_s`, or
    `grace_factor` x the seconds the quorum took when that is longer: clients' rounds last as long as their
    shards, and on real data one client may hold twice the rows of the next (the movie snippets against the
    editorials), so a fixed grace would leave the largest client out of every round."""

    def __init__(self, grid: Grid, quorum: int, grace_s: float, grace_factor: float = 0.0, poll_s: float = 0.5):
        self.grid, self.quorum, self.poll_s = grid, quorum, poll_s
        self.grace_s, self.grace_factor = grace_s, grace_factor

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        waiting = set(self.push_messages(messages))
        quorum = min(self.quorum, len(waiting))
        sent = time.time()
        end = sent + (timeout if timeout is not None else float("inf"))
        replies: list[Message] = []
        quorum_at, grace = None, self.grace_s
        while waiting and time.time() < end:
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if quorum_at is None and sum(not m.has_error() for m in replies) >= quorum:
                quorum_at = time.time()
                grace = max(self.grace_s, self.grace_factor * (quorum_at - sent))
            if waiting and quorum_at is not None and time.time() - quorum_at >= grace:
                log(
                    WARNING,
                    "round: %d of %d answered, not waiting for the other %d",
                    len(replies),
                    len(replies) + len(waiting),
                    len(waiting),
                )
                break
            if waiting:
                time.sleep(self.poll_s)
        return replies


# ---------------------------------------------------------------- the strategy


class Robust(FedAvg):
    """FedAvg that receives updates (weights minus the weights sent), refuses the bad ones and adds the
    accepted ones' mean to fp32 global weights; with `FedProx` after it in the bases (`RobustProx`), FedProx's
    `proximal-mu` goes into each round's config too."""

    def __init__(self, cfg: FederatedConfig, **kwargs):
        super().__init__(
            min_train_nodes=cfg.min_clients,
            min_evaluate_nodes=cfg.min_clients,
            min_available_nodes=cfg.min_available_clients,
            fraction_evaluate=1.0 if cfg.evaluate_on_clients else 0.0,
            **kwargs,
        )
        self.cfg = cfg
        self.global_weights: updates.Arrays = {}
        self.records: dict[int, dict] = {}  # by this process's round number (Flower's server round)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.global_weights = updates.to_float32(decode(arrays))
        self.records[server_round] = {"started": time.time(), "clients": {}, "refused": [], "failed": []}
        messages = super().configure_train(
            server_round, encode(updates.to_wire(self.global_weights, self.cfg.wire_dtype)), config, grid
        )
        # Round 1 waits for every expected client to connect; later rounds go on with the minimum (a client
        # that died stays listed until its heartbeat lapses, and a round must not wait for it to come back).
        self.min_available_nodes = self.cfg.min_clients
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        wire = encode(updates.to_wire(updates.to_float32(decode(arrays)), self.cfg.wire_dtype))
        return super().configure_evaluate(server_round, wire, config, grid)

    def aggregate_train(self, server_round: int, replies):
        record = self.records[server_round]
        answered = []
        for message in replies:
            if message.has_error():
                record["failed"].append({"node": message.metadata.src_node_id, "reason": message.error.reason})
                log(
                    WARNING,
                    "round %d: no update from node %d: %s",
                    server_round,
                    message.metadata.src_node_id,
                    message.error.reason,
                )
            else:
                answered.append(message)
        verdicts, deltas, weights = {}, {}, {}
        for message in answered:
            name = client_name(message)
            figures = dict(next(iter(message.content.metric_records.values())))
            record["clients"][name] = figures | {"shard_sha256": shard_hash(message)}
            delta = decode(next(iter(message.content.array_records.values())))
            verdicts[name] = updates.check_update(delta, self.global_weights, self.cfg.max_update_norm_ratio)
            deltas[name], weights[name] = delta, float(figures.get("num-examples", 0))
        norms = {n: v.norm_ratio for n, v in verdicts.items() if v.accepted}
        for name, why in updates.outliers(norms, self.cfg.max_median_factor).items():
            verdicts[name] = updates.Verdict(False, why, norms[name])
        for name, verdict in verdicts.items():
            record["clients"][name]["norm_ratio"] = verdict.norm_ratio
            if not verdict.accepted:
                record["refused"].append(updates.verdict_record(name, verdict))
                log(WARNING, "round %d: update of %s refused: %s", server_round, name, verdict.reason)
        accepted = [n for n, v in verdicts.items() if v.accepted]
        record["accepted"] = accepted
        if len(accepted) < self.cfg.min_clients:
            log(
                WARNING,
                "round %d: %d updates accepted, below the minimum %d: the global weights stay",
                server_round,
                len(accepted),
                self.cfg.min_clients,
            )
            return None, None
        counted = updates.aggregation_weights({n: weights[n] for n in accepted}, self.cfg.weighting)
        mean = updates.weighted_mean([updates.to_float32(deltas[n]) for n in accepted], [counted[n] for n in accepted])
        self.global_weights = updates.apply_update(self.global_weights, mean, self.cfg.server_lr)
        log(INFO, "round %d: aggregated %d updates (%s)", server_round, len(accepted), ", ".join(accepted))
        train_loss = float(
            np.average([record["clients"][n]["train_loss"] for n in accepted], weights=[weights[n] for n in accepted])
        )
        return encode(self.global_weights), MetricRecord({"train_loss": train_loss, "accepted": len(accepted)})

    def aggregate_evaluate(self, server_round: int, replies):
        replies = [m for m in replies if not m.has_error()]
        record = self.records.setdefault(server_round, {"clients": {}})
        for message in replies:
            figures = dict(next(iter(message.content.metric_records.values())))
            entry = record["clients"].setdefault(client_name(message), {})
            entry |= {
                "test_accuracy": figures["accuracy"],
                "test_loss": figures["loss"],
                "test_rows": figures["num-examples"],
            }
        return super().aggregate_evaluate(server_round, replies) if replies else None


class RobustProx(Robust, FedProx):
    """`Robust` with FedProx's round config (`proximal-mu`); the clients add the proximal term."""


def strategy_for(cfg: FederatedConfig) -> Robust:
    if cfg.strategy == "fedprox":
        return RobustProx(cfg, proximal_mu=cfg.proximal_mu)
    return Robust(cfg)


# ---------------------------------------------------------------- settings, pooled evaluation, the round's end


def pooled_evaluator(student_dir: str | None, pooled_test: str | None, max_length: int):
    """(weights) -> {pooled_accuracy, pooled_loss, <client>.accuracy ...} on the pooled test set, or None."""
    if not (student_dir and pooled_test):
        return None
    import pandas as pd

    from components.federated import local

    model, tokenizer, labels = local.load_student(Path(student_dir))
    frame = pd.read_parquet(pooled_test)
    data = local.encode_rows(tokenizer, frame, labels, max_length)
    parts = {name: frame.index[frame["client"] == name].to_numpy() for name in frame["client"].unique()}

    def evaluate(weights: updates.Arrays) -> dict[str, float]:
        local.set_arrays(model, weights)
        figures = {f"pooled_{k}": v for k, v in local.measure(model, data, tokenizer.pad_token_id).items()}
        for name, rows in parts.items():
            subset = local.Encoded([data.input_ids[i] for i in rows], data.labels[rows])
            figures[f"pooled.{name}.accuracy"] = local.measure(model, subset, tokenizer.pad_token_id)["accuracy"]
        return figures

    return evaluate


HEAD_QUERY = "query.head_statistics"  # what the ClientApp's `@app.query("head_statistics")` answers


def calibrate(grid: Grid, cfg: FederatedConfig, weights: updates.Arrays, student_dir: str, seed: int, evaluate):
    """(weights with the classifier layer refitted, the record) after the last round: every connected client
    is asked once for its statistics (`components.federated.head.head_statistics`), the replies are collected
    as a round's are (`QuorumGrid`), and the usable ones refit the layer (`head.fit_head`)."""
    from components.federated import head

    started = time.time()
    content = RecordDict(
        {
            "arrays": encode(updates.to_wire(weights, cfg.wire_dtype)),
            "config": ConfigRecord({"max-length": cfg.max_length}),
        }
    )
    messages = [Message(content=content, message_type=HEAD_QUERY, dst_node_id=n) for n in grid.get_node_ids()]
    quorum = QuorumGrid(grid, cfg.min_clients, cfg.straggler_grace_s, cfg.straggler_grace_factor)
    replies = quorum.send_and_receive(messages, timeout=cfg.round_timeout_s)
    width = int(next(v.shape[1] for n, v in weights.items() if n == f"{head.HEAD}.weight"))
    record = {"clients": {}, "refused": [], "failed": [], "bytes_up": 0}
    stats = []
    for message in replies:
        if message.has_error():
            record["failed"].append({"node": message.metadata.src_node_id, "reason": message.error.reason})
            continue
        name, arrays = client_name(message), decode(next(iter(message.content.array_records.values())))
        record["bytes_up"] += updates.payload_bytes(arrays)
        if not head.usable(arrays, width):
            record["refused"].append(name)
            log(WARNING, "head calibration: the statistics of %s refused (not finite, or not the model's shapes)", name)
            continue
        record["clients"][name] = {k: int(v[0]) for k, v in arrays.items() if k.startswith("rows.")}
        stats.append(arrays)
    if len(stats) < cfg.min_clients:
        log(
            WARNING,
            "head calibration: %d usable answers, below the minimum %d: the layer stays",
            len(stats),
            cfg.min_clients,
        )
        return weights, record | {"calibrated": False, "seconds": time.time() - started}
    calibrated = head.fit_head(Path(student_dir), weights, stats, seed, cfg.head_steps, draws=cfg.head_draws)
    record |= {"calibrated": True, "seconds": time.time() - started}
    if evaluate:
        before, after = evaluate(weights), evaluate(calibrated)
        record |= {
            "pooled_accuracy_before": before["pooled_accuracy"],
            "pooled_accuracy_after": after["pooled_accuracy"],
        }
    log(INFO, "head calibration: the classifier layer refitted to %d clients' statistics", len(stats))
    return calibrated, record


def write_json(path: Path, payload) -> None:
    tmp = path.with_name("tmp-" + path.name)
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = json.loads(Path(str(context.run_config["settings-file"])).read_text())
    cfg = FederatedConfig(**settings["federated"])
    out = Path(settings["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    resumed = updates.load_checkpoint(out / "checkpoint", settings["key"])
    if resumed is not None:
        done_rounds, start, rounds = resumed
        log(INFO, "resuming after round %d of %d from the checkpoint", done_rounds, cfg.rounds)
    else:
        with np.load(settings["start_weights"]) as saved:
            start = {name: saved[name] for name in saved.files}
        done_rounds, rounds = 0, []
    strategy = strategy_for(cfg)
    evaluate = pooled_evaluator(settings["student_dir"], settings["pooled_test"], cfg.max_length)

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        weights = updates.to_float32(decode(arrays))
        figures = evaluate(weights) if evaluate else {}
        if server_round == 0:  # before the first round of this process: the start, measured once
            if done_rounds == 0:
                rounds.append({"round": 0, **figures})
                write_json(out / "rounds.json", rounds)
            return MetricRecord({k: v for k, v in figures.items() if "." not in k}) if figures else None
        record = strategy.records.get(server_round, {})
        clients = record.get("clients", {})
        rounds.append(
            {
                "round": done_rounds + server_round,
                **figures,
                "seconds": time.time() - record.get("started", time.time()),
                "accepted": record.get("accepted", []),
                "refused": record.get("refused", []),
                "failed": record.get("failed", []),
                "clients": clients,
                "bytes_down": int(sum(c.get("bytes_down", 0) for c in clients.values())),
                "bytes_up": int(sum(c.get("bytes_up", 0) for c in clients.values())),
            }
        )
        updates.save_checkpoint(out / "checkpoint", settings["key"], done_rounds + server_round, weights, rounds)
        write_json(out / "rounds.json", rounds)
        return MetricRecord({k: v for k, v in figures.items() if "." not in k}) if figures else None

    remaining = cfg.rounds - done_rounds
    final = start
    if remaining > 0:
        result = strategy.start(
            grid=QuorumGrid(grid, cfg.min_clients, cfg.straggler_grace_s, cfg.straggler_grace_factor),
            initial_arrays=encode(updates.to_float32(start)),
            num_rounds=remaining,
            timeout=cfg.round_timeout_s,
            # round-offset: a resumed server's Flower rounds restart at 1; a client seeds by the true round
            train_config=ConfigRecord(
                cfg.local_settings()
                | {"wire-dtype": cfg.wire_dtype, "seed": settings["seed"], "round-offset": done_rounds}
            ),
            evaluate_config=ConfigRecord({"max-length": cfg.max_length}),
            evaluate_fn=end_of_round,
        )
        final = updates.to_float32(decode(result.arrays)) if len(result.arrays) else start
    calibration = None
    if cfg.calibrate_head and settings["student_dir"]:
        final, calibration = calibrate(grid, cfg, final, settings["student_dir"], settings["seed"], evaluate)
    np.savez(out / "global.npz", **final)
    write_json(
        out / "done.json",
        {"rounds": cfg.rounds, "resumed_after": done_rounds, "key": settings["key"], "head": calibration},
    )
