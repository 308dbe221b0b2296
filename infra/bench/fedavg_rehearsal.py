"""Rehearse aggregation settings of a federation in one process, before paying for a real one: the clients'
rounds run one after another with the federation's own client code (`components.federated.local.client_round`,
fp16 on the wire, distillation from the version's teacher) and are aggregated with its own functions
(`components.federated.updates`); after each round the global weights are measured on every client's test split
and on the pooled one. No Flower, no processes, no faults, no tracking: a bench for choosing settings, not a
way to federate (`miniaturize federate` is). docs/federated.md gives what it measured.

    .venv/bin/python infra/bench/fedavg_rehearsal.py --project . --from models:/NAME/1 --out /tmp/rehearsal \
        --name rows --rounds 3                                   # FedAvg as `miniaturize federate` runs it
    ... --name equal --weighting equal --server-lr 1.5       # each client's update counts equally
    ... --name steps --local-steps 74                            # every client the same optimizer steps a round
    ... --name prox --proximal-mu 0.1                            # FedProx's proximal term on every client
    ... --name scaffold --scaffold                               # drift corrected (SCAFFOLD, control variates)
    ... --name decay --round-decay                               # the client lr decayed linearly over the rounds
    ... --name kept --keep-optimizer --local-steps 25            # each client's AdamW moments kept across rounds
    ... --name fedadam --client-sgd --lr 2e-2 --server-adam 1e-3 --local-steps 25   # FedAdam, SGD clients
    ... --name fedsgd --client-sgd --lr 2e-2 --server-adam 3e-4 --local-steps 5 --rounds 60 --eval-every 10
    ... --name ccvr --load-weights /tmp/rehearsal/equal.npz --rounds 0 --calibrate-head virtual  # the head refit
    ... --name central --central-epochs 5                        # the student fine-tuned on the union instead

Each variant prints one JSON line per round and writes <out>/<name>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from components.config import DEMO_CLIENTS, DistributedConfig, load_params
from components.federated import head, local, shards, updates
from components.kit import training
from components.kit.distributed import DataParallel
from components.kit.losses import kd_loss
from components.kit.modeling import length_bucketed_batches
from components.kit.training import Distillation, Objective, classifier_loss


def prepare(project: Path, start: str, out: Path) -> tuple[Path, Path, dict[str, Path], Path]:
    """(student folder, teacher folder, {client: shard}, pooled test file): the version's warm start downloaded
    from the project's registry and one shard per vader source, as the federate flow builds them."""
    p = load_params(project / "params.yaml")
    folder = out / "shards"
    if not (folder / "shards.json").exists():
        shards.build(p.data, list(DEMO_CLIENTS), None, folder, project / "data" / "raw", project)
    warm = out / "warm_start"
    if not (warm / "student").exists():
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
        name, version = start.removeprefix("models:/").split("/")
        run_id = client.get_model_version(name, version).run_id
        client.download_artifacts(run_id, "warm_start", str(out))
    return warm / "student", warm / "teacher", {c: folder / c for c in DEMO_CLIENTS}, folder / shards.POOLED


def measure(student: Path, client_shards: dict[str, Path], pooled: Path, weights: updates.Arrays) -> dict:
    figures = {c: local.client_evaluate(student, s, weights, 64)["accuracy"] for c, s in client_shards.items()}
    model, tokenizer, labels = local.load_student(student)
    local.set_arrays(model, weights)
    data = local.encode_rows(tokenizer, pd.read_parquet(pooled / "test.parquet"), labels, 64)
    return figures | {"pooled": local.measure(model, data, tokenizer.pad_token_id)["accuracy"]}


def with_local_steps(steps: int | None, batch_size: int):
    """Make each client's train split `steps` x `batch_size` rows drawn afresh each round (None: all rows)."""
    read = local.read_split
    state = {"round": 0}

    def read_split(shard: Path, split: str) -> pd.DataFrame:
        rows = read(shard, split)
        if split == "train" and steps and len(rows) > steps * batch_size:
            rows = rows.sample(n=steps * batch_size, random_state=1000 * state["round"] + len(rows))
        return rows.reset_index(drop=True)

    local.read_split = read_split
    return state


def with_kept_optimizer_state() -> dict:
    """Each client's AdamW starts a round from the moments it ended its last round with (a device keeps them),
    instead of afresh; returns the state the loop sets `client` in."""
    make, state = training.adamw, {"client": None, "last": {}}

    def adamw(groups, lr):
        optimizer = make(groups, lr)
        if state["client"] in state["last"]:  # its last round's optimizer, read once the new one exists
            optimizer.load_state_dict(state["last"][state["client"]].state_dict())
        state["last"][state["client"]] = optimizer
        return optimizer

    training.adamw = adamw
    return state


def with_sgd_clients() -> None:
    """Clients step with plain SGD at the round's learning rate instead of AdamW: their updates stay linear in
    their gradients, so the server's mean of them is a step along the union's gradient (FedOpt's clients)."""
    training.adamw = lambda groups, lr: torch.optim.SGD(groups, lr=lr)


class ServerAdam:
    """FedAdam's server step (Reddi et al. 2021): the mean update, negated, is the pseudo-gradient of one Adam
    step (bias-corrected) at the server's own learning rate."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps, self.step = lr, beta1, beta2, eps, 0
        self.m: updates.Arrays = {}
        self.v: updates.Arrays = {}

    def apply(self, weights: updates.Arrays, mean_update: updates.Arrays) -> updates.Arrays:
        self.step += 1
        out = {}
        for name, w in weights.items():
            g = -mean_update[name]
            m = self.beta1 * self.m.get(name, 0.0) + (1 - self.beta1) * g
            v = self.beta2 * self.v.get(name, 0.0) + (1 - self.beta2) * g * g
            self.m[name], self.v[name] = m, v
            m_hat, v_hat = m / (1 - self.beta1**self.step), v / (1 - self.beta2**self.step)
            out[name] = (w - self.lr * m_hat / (v_hat**0.5 + self.eps)).astype(w.dtype)
        return out


def mean_gradient(student: Path, shard: Path, weights: updates.Arrays, settings, teacher: Path, cache: Path):
    """The gradient of a client's loss (distillation + labels) at `weights`, averaged over its train split:
    SCAFFOLD's control variate, computed afresh each round (its option I, Karimireddy et al. 2020); and the rows."""
    model, tokenizer, labels = local.load_student(student)
    local.set_arrays(model, weights)
    model.eval()
    model.get_input_embeddings().weight.requires_grad_(False)
    rows = local.read_split(shard, "train")
    data = local.encode_rows(tokenizer, rows, labels, settings.max_length)
    soft = local.teacher_logits(teacher, rows, labels, settings.max_length, cache)
    kd = Distillation(soft, settings.alpha, settings.temperature)
    loss_of = classifier_loss(model, model, data, tokenizer.pad_token_id, kd, DataParallel(DistributedConfig()))
    for batch in length_bucketed_batches([len(x) for x in data.input_ids], settings.batch_size, shuffle=False):
        (loss_of(batch) * (len(batch) / len(data))).backward()
    params = dict(model.named_parameters())
    return {name: params[name].grad.detach().numpy().copy() for name in weights}, len(rows)


def corrected_objective(model, correction: updates.Arrays) -> Objective:
    """The client's loss plus <c - c_i, w>: every local step's gradient corrected by the union's mean gradient
    less the client's own, so that a client's epoch follows the union's direction instead of its own."""
    params = dict(model.named_parameters())
    terms = {name: torch.from_numpy(value) for name, value in correction.items()}

    def loss(student_logits, teacher, labels, alpha, temperature):
        linear = sum(torch.sum(params[n] * c) for n, c in terms.items())
        return kd_loss(student_logits, teacher, labels, alpha, temperature) + linear

    return Objective(loss=loss)


def calibrate_head(args, student: Path, client_shards: dict[str, Path], weights: updates.Arrays) -> updates.Arrays:
    """The classifier layer refitted after the last round (`components.federated.head`, CCVR): `virtual` from
    each client's per-class statistics, as `miniaturize federate` does; `real`, a diagnostic, from the clients'
    rows themselves (the data leaving the devices): how far a better layer alone could go."""
    if args.calibrate_head == "virtual":
        stats = [head.head_statistics(student, s, weights, 64) for s in client_shards.values()]
        return head.fit_head(student, weights, stats, args.seed, args.head_steps, args.head_lr, args.head_draws)
    model, tokenizer, labels = local.load_student(student)
    local.set_arrays(model, weights)
    xs, ys = [], []
    for shard in client_shards.values():
        data = local.encode_rows(tokenizer, local.read_split(shard, "train"), labels, 64)
        xs.append(head.classifier_inputs(model, data, tokenizer.pad_token_id))
        ys.append(data.labels)
    layer = head.classifier_layer(model)
    head.fit_layer(layer, np.concatenate(xs), np.concatenate(ys), args.head_steps, args.head_lr, args.seed)
    return weights | {f"classifier.{n}": p.detach().numpy().copy() for n, p in layer.named_parameters()}


def rehearse(args, student: Path, teacher: Path, client_shards: dict[str, Path], pooled: Path) -> list[dict]:
    model, _, _ = local.load_student(student)
    weights = local.get_arrays(model)
    if args.load_weights:  # a run saved by --save-weights: go on from it, or only calibrate its head
        weights = dict(np.load(args.load_weights))
    settings = local.LocalSettings(lr=args.lr, local_epochs=args.local_epochs, proximal_mu=args.proximal_mu)
    state = with_local_steps(args.local_steps, settings.batch_size)
    kept = with_kept_optimizer_state() if args.keep_optimizer else None
    if args.client_sgd:
        with_sgd_clients()
    server_adam = ServerAdam(args.server_adam) if args.server_adam else None
    log = []
    if not args.rounds:  # only the loaded weights, before any calibration
        log.append(measure(student, client_shards, pooled, weights) | {"round": 0})
        print(args.name, json.dumps(log[0]), flush=True)
    for round_ in range(1, args.rounds + 1):
        state["round"], started = round_, time.perf_counter()
        if args.round_decay:  # one linear decay over the federation, as central training's over its epochs
            settings = dataclasses.replace(settings, lr=args.lr * (args.rounds - round_ + 1) / args.rounds)
        deltas, counts = [], []
        if args.scaffold:
            cache = args.out / "teacher_logits"
            measured = {
                c: mean_gradient(student, s, weights, settings, teacher, cache) for c, s in client_shards.items()
            }
            grads = {c: grad for c, (grad, _) in measured.items()}
            union = updates.weighted_mean(list(grads.values()), [rows for _, rows in measured.values()])
        for name, shard in client_shards.items():
            if args.scaffold:
                correction = {n: union[n] - grads[name][n] for n in union}
                local.proximal_objective = lambda model, start, mu, c=correction: corrected_objective(model, c)
            if kept is not None:
                kept["client"] = name
            delta, figures = local.client_round(
                student, shard, weights, settings, "float16", args.seed + round_, teacher, args.out / "teacher_logits"
            )
            deltas.append(updates.to_float32(delta))
            counts.append(figures["num-examples"] if args.weighting == "rows" else 1.0)
        mean = updates.weighted_mean(deltas, counts)
        if server_adam is not None:
            weights = server_adam.apply(weights, mean)
        else:
            weights = updates.apply_update(weights, mean, args.server_lr)
        seconds = round(time.perf_counter() - started)
        if round_ % args.eval_every and round_ != args.rounds:  # short rounds: measuring would cost more
            continue
        entry = measure(student, client_shards, pooled, weights) | {"round": round_, "seconds": seconds}
        log.append(entry)
        print(args.name, json.dumps({k: round(v, 4) for k, v in entry.items()}), flush=True)
    if args.save_weights:
        np.savez(args.out / f"{args.name}.npz", **weights)
    if args.calibrate_head:
        started = time.perf_counter()
        calibrated = calibrate_head(args, student, client_shards, weights)
        entry = measure(student, client_shards, pooled, calibrated) | {
            "round": f"head-{args.calibrate_head}",
            "seconds": round(time.perf_counter() - started),
        }
        log.append(entry)
        print(args.name, json.dumps(entry), flush=True)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--from", dest="start", required=True, help="models:/NAME/VERSION")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--local-steps", type=int, default=None)
    parser.add_argument("--weighting", choices=["rows", "equal"], default="rows")
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--proximal-mu", type=float, default=0.0, help="FedProx's mu (0: FedAvg)")
    parser.add_argument("--scaffold", action="store_true", help="correct each local step by c - c_i")
    parser.add_argument("--central-epochs", type=int, default=None)
    parser.add_argument("--keep-optimizer", action="store_true", help="clients keep AdamW's moments across rounds")
    parser.add_argument("--client-sgd", action="store_true", help="clients step with SGD at --lr, not AdamW")
    parser.add_argument("--server-adam", type=float, default=None, help="FedAdam: the server's Adam lr")
    parser.add_argument("--round-decay", action="store_true", help="client lr x (R - r + 1) / R in round r")
    parser.add_argument("--save-weights", action="store_true", help="write the last global weights to <out>/<name>.npz")
    parser.add_argument("--load-weights", type=Path, default=None, help="start from weights --save-weights wrote")
    parser.add_argument("--calibrate-head", choices=["virtual", "real"], default=None, help="CCVR after the last round")
    parser.add_argument("--head-steps", type=int, default=1000)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--head-draws", type=float, default=4.0, help="virtual rows per real row of each class")
    parser.add_argument("--eval-every", type=int, default=1, help="measure after every Nth round (and the last)")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    student, teacher, client_shards, pooled = prepare(args.project.resolve(), args.start, args.out)
    if args.central_epochs:
        settings = local.LocalSettings(lr=args.lr)
        trained = args.out / args.name
        local.finetune_central(
            student, list(client_shards.values()), settings, args.central_epochs, args.seed, trained, teacher
        )
        model, _, _ = local.load_student(trained)
        log = [measure(student, client_shards, pooled, local.get_arrays(model))]
        print(args.name, json.dumps(log[0]), flush=True)
    else:
        log = rehearse(args, student, teacher, client_shards, pooled)
    (args.out / f"{args.name}.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
