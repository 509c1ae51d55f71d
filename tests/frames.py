"""Small frames tables and models for the engine and labeling tests: random JPEG frames, 4 per clip, and a
width-4 classifier whose confidences a test sets."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import torch

from flywheel import layout
from flywheel.data.schema import FRAMES
from flywheel.deployment import deploy
from flywheel.model import ModelConfig, build_model

CLASSES = ["clear_road", "vehicle", "pedestrian", "cyclist", "red_light", "obstacle"]
SIZE = 16


def tiny_model(*, seed: int = 0, head_scale: float = 1.0, bias: list[float] | None = None):
    """A width-4 FrameClassifier; head_scale spreads the confidences, `bias` with a zero head fixes them."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(num_classes=len(CLASSES), image_size=SIZE, width=4, depth=1)).eval()
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
        if bias is not None:
            model.head.weight.zero_()
            model.head.bias.copy_(torch.tensor(bias))
    return model


def onnx_session(model):
    return deploy.session(deploy.export_onnx(model, image_size=SIZE))


def frames_table(n: int, *, truth: str | list[str] = "clear_road", batch: str = "b1", conditions=None) -> pa.Table:
    rng = np.random.default_rng(n)
    rows = []
    for i in range(n):
        img = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        rows.append({
            "frame_id": f"c{i // 4}/front/{i % 4}", "clip_id": f"c{i // 4}", "vehicle_id": "v1", "trigger": "random",
            "recorded_at": "2026-01-01T00:00:00Z", "condition": (conditions or ["day"] * n)[i], "camera": "front",
            "timestamp_ns": i, "image": cv2.imencode(".jpg", img)[1].tobytes(), "format": "jpeg", "height": 12,
            "width": 16, "ground_truth": truth if isinstance(truth, str) else truth[i], "batch_id": batch,
            "clip_key": f"landing/v1/d/c{i // 4}.mcap",
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=FRAMES)


def batch_in_store(store, frames: pa.Table, batch_id: str = "b1") -> pa.Table:
    store.write_parquet(layout.frames_key(batch_id), frames)  # where the annotator looks the truth up
    return frames
