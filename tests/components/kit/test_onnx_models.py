from types import SimpleNamespace

import numpy as np

from components.kit.modeling import Encoded
from components.kit.onnx_models import onnx_logits


class FakeSession:
    """Declares only input_ids and attention_mask, like a DistilBERT export; records what it is fed."""

    def __init__(self):
        self.fed: list[set[str]] = []

    def get_inputs(self):
        return [SimpleNamespace(name="input_ids"), SimpleNamespace(name="attention_mask")]

    def get_outputs(self):
        return [SimpleNamespace(name="logits", shape=["batch_size", 3])]

    def run(self, names, feed):
        self.fed.append(set(feed))
        ids = feed["input_ids"]
        return [np.stack([ids.sum(1), feed["attention_mask"].sum(1), np.zeros(len(ids))], 1).astype(np.float32)]


def test_onnx_logits_feeds_only_declared_inputs_and_restores_order():
    data = Encoded([[1, 2, 3], [4], [5, 6]], np.array([0, 1, 2]))
    session = FakeSession()
    logits = onnx_logits(session, data, pad_id=0, batch_size=2)
    assert all(fed == {"input_ids", "attention_mask"} for fed in session.fed)
    np.testing.assert_array_equal(logits[:, 0], [6, 4, 11])  # row order of the split, not of the batches
    np.testing.assert_array_equal(logits[:, 1], [3, 1, 2])
    assert onnx_logits(session, Encoded([], np.array([])), pad_id=0).shape == (0, 3)


class MultitaskSession:
    """A multitask export's outputs: `logits_a` (2 wide), a non-logit output between, `logits_b` (1 wide)."""

    def get_inputs(self):
        return [SimpleNamespace(name="input_ids")]

    def get_outputs(self):
        return [
            SimpleNamespace(name="logits_a", shape=["batch_size", 2]),
            SimpleNamespace(name="hidden", shape=["batch_size", 8]),
            SimpleNamespace(name="logits_b", shape=["batch_size", 1]),
        ]

    def run(self, names, feed):
        assert names == ["logits_a", "logits_b"]
        total = feed["input_ids"].sum(1).astype(np.float32)
        return [np.stack([total, -total], 1), (total * 10)[:, None]]


def test_onnx_logits_concatenates_per_task_outputs_in_graph_order():
    from components.kit.onnx_models import onnx_outputs

    data = Encoded([[1, 2, 3], [4], [5, 6]], np.array([[0, 0], [1, 0], [0, 0]]))
    per_output = onnx_outputs(MultitaskSession(), data, pad_id=0, batch_size=2)
    assert list(per_output) == ["logits_a", "logits_b"]
    np.testing.assert_array_equal(per_output["logits_b"][:, 0], [60, 40, 110])
    logits = onnx_logits(MultitaskSession(), data, pad_id=0, batch_size=2)
    np.testing.assert_array_equal(logits, [[6, -6, 60], [4, -4, 40], [11, -11, 110]])
    assert onnx_logits(MultitaskSession(), Encoded([], np.zeros((0, 2))), pad_id=0).shape == (0, 3)
