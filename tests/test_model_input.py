"""One model-input path: the reader (torch) and the deployed graph's callers (ONNX) see the same bytes."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from flywheel import model_input
from flywheel.data.dataset import append_version
from flywheel.data.reader import load_arrays
from flywheel.data.schema import DATASET, FRAMES
from flywheel.deployment import champion, deploy
from flywheel.deployment.champion import Champion
from flywheel.model import ModelConfig, build_model
from flywheel.predict import Predictions
from flywheel.store import open_store

CLASSES = ["a", "b"]
S = 32
# (height, width, format): the simulator's size, a camera far larger than the input (libjpeg's
# reduced decode), a PNG, a portrait frame
SHAPES = [(72, 96, "jpeg"), (480, 640, "jpeg"), (50, 40, "png"), (96, 64, "jpeg")]


def _encoded(rng, h, w, fmt) -> bytes:
    rgb = rng.integers(0, 256, (h, w, 3), np.uint8)
    rgb[h // 4 : h // 2, w // 4 : w // 2] = (250, 20, 20)  # structure, so a wrong resize would show
    return cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """One clip's frames as the frames table has them, and the same frames as a dataset version."""
    rng = np.random.default_rng(0)
    common = {"clip_id": "c1", "vehicle_id": "v1", "trigger": "random", "condition": "day", "camera": "front"}
    rows = [{**common, "frame_id": f"c1/front/{i}", "timestamp_ns": i, "image": _encoded(rng, h, w, fmt),
             "format": fmt, "height": h, "width": w} for i, (h, w, fmt) in enumerate(SHAPES)]  # fmt: skip
    table = pa.Table.from_pylist([{**r, "recorded_at": "2026-01-01T00:00:00Z", "ground_truth": "a", "batch_id": "b1",
                                   "clip_key": "landing/v1/d/c1.mcap"} for r in rows], schema=FRAMES)  # fmt: skip
    extra = {"label": 0, "label_source": "human", "label_confidence": 1.0, "split": "test", "augmentation": ""}
    rows = pa.Table.from_pylist([{**{k: r[k] for k in r if k != "format"}, **extra} for r in rows], schema=DATASET)
    store = open_store(str(tmp_path_factory.mktemp("store")))
    manifest = append_version(store, name="ds", batches={"b1": rows}, classes=CLASSES)
    return store, manifest, table


def test_torch_and_onnx_paths_see_byte_identical_input(frames, monkeypatch):
    store, manifest, table = frames
    fids = table.column("frame_id").to_pylist()
    torch_input, _, _ = load_arrays(store, manifest, frame_ids=fids, image_size=S)  # training and evaluation

    seen = {}

    def capture(session, images, **kw):  # what the deployed graph would be given
        seen["images"] = images.copy()
        return Predictions(np.full((len(images), 2), 0.5, np.float32), None)

    monkeypatch.setattr(champion, "predict", capture)
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=2, image_size=S, width=4, depth=1))
    Champion(deploy.session(deploy.export_onnx(model, image_size=S)), {"image_size": S}).score(table)
    assert seen["images"].dtype == torch_input.dtype == np.uint8
    assert seen["images"].shape == torch_input.shape == (len(SHAPES), 3, S, S)
    assert seen["images"].tobytes() == torch_input.tobytes()  # auto-labels, queue, label errors


def test_camera_frames_take_the_same_path_as_decoded_ones(frames):
    """Shadow mode gets RGB frames from the camera, not JPEG: the same resize and layout apply."""
    store, manifest, table = frames
    for data, h, w in zip(table.column("image").to_pylist(), table.column("height").to_pylist(),
                          table.column("width").to_pylist(), strict=True):  # fmt: skip
        if min(h, w) // S >= 2:
            continue  # a reduced JPEG decode has no camera-side counterpart (the car never decodes a JPEG)
        rgb = model_input.decode_rgb(data, S)
        car = model_input.frames_to_input(rgb[None], S)[0]
        assert car.tobytes() == model_input.decode_image(data, S, height=h, width=w).tobytes()


def test_deploy_manifest_states_the_input_the_graph_takes(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=2, image_size=S, width=4, depth=1))
    data = deploy.export_onnx(model, image_size=S)
    store = open_store(str(tmp_path))
    manifest = deploy.deploy(store, model_name="m", version="v1", onnx_bytes=data, classes=CLASSES, image_size=S,
                             metrics={}, dataset={"name": "d", "version": 1, "manifest_sha256": "0" * 64},
                             mlflow_version="1", gate={"passed": True})  # fmt: skip
    spec = manifest["input"]
    graph_input, _ = deploy.graph_spec(data)
    assert spec == model_input.input_spec(S)
    assert {k: spec[k] for k in ("name", "dtype")} == {k: graph_input[k] for k in ("name", "dtype")}
    assert spec["shape"] == graph_input["shape"] == ["batch", 3, S, S]


def test_undecodable_bytes_are_named():
    with pytest.raises(ValueError, match="frame c9/front/0: image bytes cannot be decoded"):
        model_input.decode_images([b"not an image"], S, frame_ids=["frame c9/front/0"])
