"""The Flower ClientApp a device runs: on a `train` message it fine-tunes the student, holding the global
weights it received, on its private shard and answers with its update; on an `evaluate` message it measures
the received weights on its own test split; on the `query.head_statistics` message after the last round it
answers with the count, mean and covariance of its train rows' classifier inputs per class
(`components.federated.head`), from which the server refits the classifier layer. Data never leave the device: only the update travels, in the
dtype the server asks for (`wire-dtype`), with the client's figures and its shard's content hash.

Flower's SuperNode runs it (`flwr-clientapp`, one process per message); what it reads of the device comes
from the SuperNode's `--node-config`:

    name         the client's name (the shard's source in the demonstration)
    data-dir     its shard: train, validation and test parquet files (text, label)
    student-dir  the compressed student it starts from (its word-embedding table stays as it is here)
    teacher-dir  optional: a teacher for distillation on its train split ("" or absent: labels alone)
    cache-dir    optional: where the teacher's logits are kept between rounds (default: <data-dir>/.cache)
    threads      optional: torch threads (default 1)

The round's settings (epochs, learning rate, distillation weight, FedProx's mu) come with each message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@dataclass(frozen=True)
class Device:
    """What the SuperNode's node config says about this client."""

    name: str
    data_dir: Path
    student_dir: Path
    teacher_dir: Path | None
    cache_dir: Path
    threads: int

    @classmethod
    def from_node_config(cls, node: dict) -> Device:
        data = Path(str(node["data-dir"]))
        teacher = str(node.get("teacher-dir", "") or "")
        return cls(
            name=str(node.get("name", data.name)),
            data_dir=data,
            student_dir=Path(str(node["student-dir"])),
            teacher_dir=Path(teacher) if teacher else None,
            cache_dir=Path(str(node.get("cache-dir", "") or data / ".cache")),
            threads=int(node.get("threads", 1)),
        )


def device_for(context: Context) -> Device:
    """This client's device, its torch threads set as the node config asks."""
    import torch

    device = Device.from_node_config(dict(context.node_config))
    torch.set_num_threads(device.threads)
    return device


def received_arrays(message: Message) -> dict:
    return {name: array.numpy() for name, array in message.content["arrays"].items()}


def identity(device: Device) -> ConfigRecord:
    from components.federated.shards import shard_sha256

    return ConfigRecord({"name": device.name, "shard-sha256": shard_sha256(device.data_dir)})


def train_reply(message: Message, context: Context) -> tuple[dict, dict, Device]:
    """(update, figures, device) of this client's round: the work of `train`, apart so a test can wrap it."""
    from components.federated import local

    device = device_for(context)
    config = dict(message.content["config"])
    settings = local.LocalSettings.from_config(config)
    round_number = int(config.get("round-offset", 0)) + int(config.get("server-round", 0))
    seed = int(config.get("seed", 0)) * 1000 + round_number
    update, figures = local.client_round(
        device.student_dir,
        device.data_dir,
        received_arrays(message),
        settings,
        str(config.get("wire-dtype", "float16")),
        seed,
        device.teacher_dir,
        device.cache_dir,
    )
    return update, figures, device


def reply(message: Message, update: dict, figures: dict, device: Device) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({name: Array(value) for name, value in update.items()}),
            "metrics": MetricRecord({k: float(v) for k, v in figures.items()}),
            "client": identity(device),
        }
    )
    return Message(content=content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    update, figures, device = train_reply(message, context)
    return reply(message, update, figures, device)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    from components.federated import local

    device = device_for(context)
    max_length = int(message.content["config"].get("max-length", 64))
    figures = local.client_evaluate(device.student_dir, device.data_dir, received_arrays(message), max_length)
    content = RecordDict(
        {"metrics": MetricRecord({k: float(v) for k, v in figures.items()}), "client": identity(device)}
    )
    return Message(content=content, reply_to=message)


@app.query("head_statistics")
def head_statistics(message: Message, context: Context) -> Message:
    from components.federated import head

    device = device_for(context)
    max_length = int(message.content["config"].get("max-length", 64))
    stats = head.head_statistics(device.student_dir, device.data_dir, received_arrays(message), max_length)
    content = RecordDict(
        {"arrays": ArrayRecord({name: Array(value) for name, value in stats.items()}), "client": identity(device)}
    )
    return Message(content=content, reply_to=message)
