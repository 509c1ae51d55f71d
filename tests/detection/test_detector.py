"""The detection task's detector (CenterNet in plain torch) and its COCO metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flywheel.detection import (
    CenterNet,
    DetectorConfig,
    coco_map,
    decode,
    detect,
    encode,
    load_detector,
    save_detector,
    score_detector,
    to_input,
    train_detector,
)

CLASSES = ["red", "green", "blue"]
COLOURS = [(230, 40, 40), (40, 230, 40), (40, 40, 230)]


def scenes(n: int, seed: int, side: int = 48) -> tuple[np.ndarray, list[list[tuple]]]:
    """Noisy grey frames with 1-3 filled rectangles each, the class being the colour."""
    rng = np.random.default_rng(seed)
    images, boxes = rng.integers(60, 120, (n, 3, side, side), dtype=np.uint8), []
    for i in range(n):
        frame = []
        for _ in range(rng.integers(1, 4)):
            c, w, h = int(rng.integers(3)), int(rng.integers(side // 8, side // 3)), int(rng.integers(side // 8, side // 3))
            x, y = int(rng.integers(0, side - w)), int(rng.integers(0, side - h))
            images[i, :, y : y + h, x : x + w] = np.array(COLOURS[c], np.uint8)[:, None, None]
            frame.append((c, x, y, w, h))
        boxes.append(frame)
    return images, boxes


def _perfect(boxes, cfg):
    """The heads' outputs that encode `boxes` exactly (logits of the target heatmap)."""
    t = encode(boxes, cfg)
    heat = torch.logit(torch.from_numpy(t["heatmap"]).clamp(1e-6, 1 - 1e-6))[None]
    return heat, torch.from_numpy(t["size"])[None], torch.from_numpy(t["offset"])[None]


def test_targets_decode_back_to_their_boxes_and_score_a_perfect_map():
    cfg = DetectorConfig(num_classes=3, image_size=64)
    boxes = [(0, 4.0, 6.0, 20.0, 12.0), (2, 30.0, 30.0, 10.0, 25.0), (2, 41.5, 3.0, 7.0, 9.0)]
    [dets] = decode(_perfect(boxes, cfg))
    got = sorted((c, x, y, w, h) for c, _, x, y, w, h in dets)
    assert np.allclose(got, sorted(boxes), atol=1e-4)
    r = coco_map([boxes], [dets], CLASSES)
    assert r["map"] == r["map50"] == 1.0 and r["boxes"] == 3
    assert r["per_class"]["green"] == {"map": None, "map50": None}  # no true box of it: no AP


def test_coco_map_counts_misses_false_positives_and_loose_boxes():
    truth = [[(0, 10, 10, 20, 20)], [(1, 0, 0, 10, 10)]]
    exact = [[(0, 0.9, 10, 10, 20, 20)], [(1, 0.8, 0, 0, 10, 10)]]
    assert coco_map(truth, exact, CLASSES)["map"] == 1.0
    # shifted by a quarter of its side: IoU 0.6, a hit at .5, a miss from .65 on
    loose = [[(0, 0.9, 15, 10, 20, 20)], [(1, 0.8, 0, 0, 10, 10)]]
    r = coco_map(truth, loose, CLASSES)
    assert r["map50"] == 1.0 and r["per_class"]["red"]["map"] == pytest.approx(0.3, abs=0.01)
    wrong_class = [[(1, 0.9, 10, 10, 20, 20)], [(1, 0.8, 0, 0, 10, 10)]]
    assert coco_map(truth, wrong_class, CLASSES)["per_class"]["red"]["map50"] == 0.0
    by_slice = coco_map(truth, wrong_class, CLASSES, slices={"condition": ["fog", "day"]})["per_slice"]
    assert by_slice["condition=day"]["map50"] == 1.0 and by_slice["condition=fog"]["map50"] == 0.0
    with pytest.raises(ValueError, match="2 images of ground truth but 1"):
        coco_map(truth, exact[:1], CLASSES)


def test_the_detector_learns_boxes_on_cpu_and_survives_a_save():
    cfg = DetectorConfig(num_classes=3, image_size=32, width=8, head_channels=32)
    train_x, train_b = scenes(300, seed=0, side=32)
    test_x, test_b = scenes(80, seed=1, side=32)
    untrained = score_detector(CenterNet(cfg).eval(), test_x, test_b, CLASSES)
    model, losses = train_detector(train_x, train_b, cfg, steps=120, batch_size=32, seed=0)
    trained = score_detector(model, test_x, test_b, CLASSES)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert trained["map50"] > 0.6 and trained["map50"] > untrained["map50"] + 0.5, (trained, untrained)
    again, classes = load_detector(save_detector(model, CLASSES))
    assert classes == CLASSES and detect(again, test_x[:8]) == detect(model, test_x[:8])


def test_boxes_scale_with_the_resize_and_bad_input_is_named():
    assert to_input([(1, 10, 6, 20, 12)], width=96, height=72, side=48) == [(1, 5.0, 4.0, 10.0, 8.0)]
    with pytest.raises(ValueError, match="multiple of 8"):
        DetectorConfig(num_classes=2, image_size=50)
    cfg = DetectorConfig(num_classes=2, image_size=32)
    with pytest.raises(ValueError, match="box class 5"):
        encode([(5, 1, 1, 4, 4)], cfg)
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 32, 32\)"):
        train_detector(np.zeros((2, 3, 16, 16), np.uint8), [[], []], cfg, steps=1)


def test_the_onnx_graph_finds_the_same_boxes_and_a_changed_graph_is_caught():
    import onnx

    from flywheel.detection.export import check_parity, export_onnx

    cfg = DetectorConfig(num_classes=3, image_size=32, width=8, head_channels=32)
    train_x, train_b = scenes(200, seed=0, side=32)
    model, _ = train_detector(train_x, train_b, cfg, steps=40, batch_size=32, seed=0)
    test_x, _ = scenes(16, seed=1, side=32)
    data = export_onnx(model)
    ok = check_parity(model, data, test_x, min_score=0.05)
    assert ok["ok"] and ok["boxes"] > 0 and ok["max_corner_diff"] < 0.05, ok
    graph = onnx.load_from_string(data)  # the size head's last bias moved: boxes of another size
    bias = next(t for t in graph.graph.initializer if t.name == "size.2.bias")
    bias.raw_data = (np.frombuffer(bias.raw_data, np.float32) + 1.0).astype(np.float32).tobytes()
    bad = check_parity(model, graph.SerializeToString(), test_x, min_score=0.05)
    assert not bad["ok"] and "corners by 4 px" in bad["mismatch"], bad
