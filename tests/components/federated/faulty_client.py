"""A ClientApp for the fault tests (tests/flows/test_federate_runtime.py): the real one, with a fault a node's
config asks for. It runs in the Flower environment's `flwr-clientapp` processes (never collected by pytest):

    fault=nan    the client's update is NaN everywhere (the server must refuse it and aggregate the others), and so
                 are the statistics it sends for the head calibration
    fault=slow   the client writes `marker` then sleeps `slow-seconds` before training (the test kills its
                 SuperNode meanwhile: a client dying mid-round)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from components.federated import client_app

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    fault = str(context.node_config.get("fault", ""))
    if fault == "slow":
        Path(str(context.node_config["marker"])).write_text(str(time.time()))
        time.sleep(float(context.node_config.get("slow-seconds", 600)))
    update, figures, device = client_app.train_reply(message, context)
    if fault == "nan":
        update = {name: np.full_like(value, np.nan) for name, value in update.items()}
    return client_app.reply(message, update, figures, device)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return client_app.evaluate(message, context)


@app.query("head_statistics")
def head_statistics(message: Message, context: Context) -> Message:
    answer = client_app.head_statistics(message, context)
    if str(context.node_config.get("fault", "")) != "nan":
        return answer
    arrays = next(iter(answer.content.array_records.values()))
    poisoned = {name: np.full_like(array.numpy(), np.nan) for name, array in arrays.items()}
    answer.content["arrays"] = ArrayRecord({name: Array(value) for name, value in poisoned.items()})
    return answer
