"""The classifier layer refitted on the server after the last round, from what each client sends about its data:
CCVR, classifier calibration with virtual representations (Luo et al. 2021).

On data that differ in kind from client to client (the four vader sources: positive rows are 40% of the
editorials and 69% of the tweets), each client's round pulls the classifier layer toward its own label mix and
its own region of the feature space, and FedAvg's average of those layers serves no client well, while the body
below it has learned features that separate the classes for all of them. Refitting the layer alone closes most
of that gap (docs/federated.md: measured). No row leaves a device: each client sends, for each class, the
count, mean and covariance of what the classifier layer receives on its train split (`head_statistics`: for a
width of 384, about 0.6 MB per class in fp32, once); the server draws `draws` x count virtual inputs from each
Gaussian and fits the layer to all of them (`fit_head`), starting from the aggregated layer.

    from components.federated import head
    stats = [head.head_statistics(student_dir, shard, weights, 64) for shard in shards]   # on each client
    weights = head.fit_head(student_dir, weights, stats, seed=13)                           # on the server
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from components.federated.updates import Arrays
from components.kit.modeling import collate, length_bucketed_batches, model_inputs

HEAD = "classifier"  # the module whose input is the representation and whose output the logits
RIDGE = 1e-4  # added to every covariance's diagonal: saturated tanh units leave it singular


class NoHead(ValueError):
    """The model has no `classifier` linear layer to refit."""


def classifier_layer(model: torch.nn.Module) -> torch.nn.Linear:
    layer = getattr(model, HEAD, None)
    if not isinstance(layer, torch.nn.Linear):
        raise NoHead(f"{type(model).__name__} has no linear `{HEAD}` layer")
    return layer


@torch.inference_mode()
def classifier_inputs(model: torch.nn.Module, data, pad_id: int) -> np.ndarray:
    """What the classifier layer receives for each row of an encoded split (eval mode), in row order."""
    model.eval()
    layer, seen = classifier_layer(model), []
    hook = layer.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    features = np.zeros((len(data), layer.in_features), dtype=np.float32)
    try:
        for index in length_bucketed_batches([len(x) for x in data.input_ids], 64, shuffle=False):
            model(**model_inputs(model, collate(data.input_ids, index, pad_id)))
            features[index] = seen.pop().float().numpy()
    finally:
        hook.remove()
    return features


def statistics_of(features: np.ndarray, labels: np.ndarray, num_labels: int) -> Arrays:
    """{rows.k, mean.k, cov.k} for every class k with at least two rows."""
    stats: Arrays = {}
    for k in range(num_labels):
        own = features[labels == k].astype(np.float64)
        if len(own) < 2:
            continue
        stats[f"rows.{k}"] = np.array([len(own)], dtype=np.float32)
        stats[f"mean.{k}"] = own.mean(0).astype(np.float32)
        stats[f"cov.{k}"] = np.cov(own, rowvar=False).astype(np.float32)
    return stats


def head_statistics(student_dir: Path, shard: Path, received: Arrays, max_length: int) -> Arrays:
    """A client's side: the received global weights put in the student, the statistics of its train split's
    classifier inputs per class (`statistics_of`)."""
    from components.federated import local

    model, tokenizer, labels = local.load_student(student_dir)
    local.set_arrays(model, received)
    data = local.encode_rows(tokenizer, local.read_split(shard, "train"), labels, max_length)
    return statistics_of(classifier_inputs(model, data, tokenizer.pad_token_id), data.labels, len(labels))


def usable(stats: Arrays, width: int) -> bool:
    """Statistics a server can draw from: finite, the right shapes, counts above one."""
    for name, value in stats.items():
        kind = name.split(".")[0]
        shape = {"rows": (1,), "mean": (width,), "cov": (width, width)}.get(kind)
        if shape is None or value.shape != shape or not np.all(np.isfinite(value)):
            return False
        if kind == "rows" and value[0] < 2:
            return False
    return bool(stats)


def virtual_inputs(stats: list[Arrays], draws: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs drawn from every client's per-class Gaussians, draws x the client's rows of that class each."""
    xs, ys = [], []
    for client in stats:
        for name in client:
            if not name.startswith("rows."):
                continue
            k = int(name.split(".")[1])
            n = max(1, round(draws * float(client[name][0])))
            cov = client[f"cov.{k}"].astype(np.float64) + RIDGE * np.eye(len(client[f"mean.{k}"]))
            xs.append(rng.multivariate_normal(client[f"mean.{k}"], cov, size=n, method="cholesky"))
            ys.append(np.full(n, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def fit_layer(layer: torch.nn.Linear, x: np.ndarray, y: np.ndarray, steps: int, lr: float, seed: int) -> None:
    """Cross-entropy on (x, y), full batch, Adam, from the layer's present weights."""
    torch.manual_seed(seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y).long()
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(layer(inputs), targets).backward()
            optimizer.step()


def fit_head(
    student_dir: Path,
    weights: Arrays,
    stats: list[Arrays],
    seed: int,
    steps: int = 1000,
    lr: float = 1e-3,
    draws: float = 4.0,
) -> Arrays:
    """The server's side: `weights` with the classifier layer refitted to virtual inputs drawn from the clients'
    statistics (those `usable`; others are left out). Returns the weights unchanged when none is usable."""
    from components.federated import local

    model, _, _ = local.load_student(student_dir)
    local.set_arrays(model, weights)
    layer = classifier_layer(model)
    good = [s for s in stats if usable(s, layer.in_features)]
    if not good:
        return weights
    x, y = virtual_inputs(good, draws, np.random.default_rng(seed))
    fit_layer(layer, x, y, steps, lr, seed)
    refitted = {f"{HEAD}.{name}": p.detach().numpy().copy() for name, p in layer.named_parameters()}
    return weights | {name: value for name, value in refitted.items() if name in weights}
