"""int8 deployment: the int8 graph of a trained model, its check against fp32, its latency, and
publishing both (the fleet runs the one the manifest serves)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flywheel.deployment import deploy as dp
from flywheel.deployment import quantize
from flywheel.model import load_weights
from flywheel.predict import predict
from flywheel.store import LocalStore
from flywheel.training.train import TrainConfig, train
from tests.deployment.test_deploy import CLASSES, do_deploy

SIZE = 16


def _frames(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames (n, 3, SIZE, SIZE) whose class is the brightest channel."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 100, (n, 3, SIZE, SIZE), dtype=np.uint8)
    images[np.arange(n), labels] += 120
    return images, labels


@pytest.fixture(scope="module")
def graphs():
    """A trained tiny model's fp32 graph, its int8 graph (calibrated on train frames), and held-out frames."""
    x, y = _frames(256, seed=0)
    batches = [{"image": torch.from_numpy(x[i : i + 32]), "label": torch.from_numpy(y[i : i + 32])}
               for i in range(0, 256, 32)]  # fmt: skip
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, width=8, depth=1, image_size=SIZE, device="cpu")
    model, _ = load_weights(train(train_loader=batches, classes=CLASSES, cfg=cfg).weights)
    fp32 = dp.export_onnx(model, image_size=SIZE)
    return fp32, quantize.quantize_int8(fp32, x[:64]), _frames(200, seed=1)


def test_int8_graph_keeps_the_io_and_the_answers(graphs):
    fp32, int8, (x, y) = graphs
    assert dp.graph_spec(int8) == dp.graph_spec(fp32)  # same uint8 input, same logits output
    assert len(int8) < len(fp32)  # int8 weights
    a = predict(dp.session(fp32), x).probs.argmax(1)
    b = predict(dp.session(int8), x).probs.argmax(1)
    assert (a == y).mean() > 0.9 and (a == b).mean() > 0.95
    latency = quantize.latency_ms(int8, SIZE, runs=3)
    assert set(latency) == {"b1", "b32"} and all(v > 0 for v in latency.values())


def test_quantize_needs_calibration_frames(graphs):
    with pytest.raises(ValueError, match="calibration must be uint8"):
        quantize.quantize_int8(graphs[0], np.zeros((0, 3, SIZE, SIZE), np.uint8))


Y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
COND = {"condition": ["day"] * 4 + ["fog"] * 4}


@pytest.mark.parametrize("int8_preds, max_drop, min_frames, passed, why", [
    (Y, 0.0, 1, True, "no slice worse"),                                     # identical answers
    (np.array([0, 1, 2, 0, 1, 2, 0, 2]), 0.2, 1, False, "condition=fog loses 0.250"),  # one fog error
    (np.array([0, 1, 2, 0, 1, 2, 0, 2]), 0.2, 5, True, "no slice worse"),    # fog (4 frames) too small to judge
    (np.array([0, 1, 2, 0, 1, 2, 0, 2]), 0.1, 5, False, "accuracy drops 0.1250 > 0.1000"),
])  # fmt: skip
def test_int8_check_table(int8_preds, max_drop, min_frames, passed, why):
    out = quantize.check_int8(Y, int8_preds, Y, COND, max_drop=max_drop, slice_tolerance=0.05,
                              min_slice_frames=min_frames)  # fmt: skip
    assert out["passed"] == passed and why in out["reason"]
    assert [s["slice"] for s in out["slices"]] == ["condition=day", "condition=fog"]
    assert all(s["judged"] == (s["n"] >= min_frames) for s in out["slices"])


def test_the_fleet_runs_the_graph_the_manifest_serves(tmp_path, graphs):
    fp32, int8, (x, y) = graphs
    store = LocalStore(tmp_path)
    check = {"passed": True, "reason": "ok"}
    timed = {"fp32": {"b1": 1.0, "b32": 5.0}, "int8": {"b1": 0.5, "b32": 2.0}}
    manifest = do_deploy(store, "v1", fp32, int8={"bytes": int8, "check": check, "latency_ms": timed}, serve="int8")
    assert manifest["serve"] == "int8" and manifest["int8"]["key"].endswith("v1/model.int8.onnx")
    assert manifest["latency_ms"] == timed and manifest["onnx"]["key"].endswith("v1/model.onnx")
    session, _ = dp.load_deployed(store, "perception")
    served = predict(session, x).probs
    assert np.allclose(served, predict(dp.session(int8), x).probs)  # the int8 graph, not fp32
    failed = {"bytes": int8, "check": {"passed": False, "reason": "accuracy drops 0.02 > 0.005"}, "latency_ms": timed}
    with pytest.raises(ValueError, match="serve must be"):  # int8 that failed its check is never served
        do_deploy(store, "v2", fp32, int8=failed, serve="int8")
    alone = do_deploy(store, "v2", fp32, int8=failed, serve="fp32")  # fp32 alone, and why
    assert alone["serve"] == "fp32" and alone["int8"]["key"] is None and "drops" in alone["int8"]["check"]["reason"]
    assert not store.exists("deploy/perception/v2/model.int8.onnx")
