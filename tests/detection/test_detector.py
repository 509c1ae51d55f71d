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
    assert not bad["ok"] and bad["max_corner_diff"] >= 2 and "corners by" in bad["mismatch"], bad  # w, h + 4 px


def _noisy(truth, rng, jitter: float, false_per_image: int = 1):
    """Detections of `truth`: each box moved by up to `jitter` of its size, scored at random, plus false ones."""
    out = []
    for boxes in truth:
        dets = [(c, float(rng.uniform(0.3, 1)), x + jitter * w * rng.uniform(-1, 1), y + jitter * h * rng.uniform(-1, 1), w, h)
                for c, x, y, w, h in boxes]  # fmt: skip
        dets += [(int(rng.integers(3)), float(rng.uniform(0, 0.6)), *rng.uniform(0, 30, 2), 8.0, 8.0)
                 for _ in range(false_per_image)]  # fmt: skip
        out.append(dets)
    return out


def test_the_weighted_map_is_cocoevals_and_the_paired_bootstrap_sees_a_better_detector():
    from flywheel.detection.metrics import match, paired_bootstrap, weighted_map

    rng = np.random.default_rng(0)
    _, truth = scenes(60, seed=3, side=48)
    sloppy, sharp = _noisy(truth, rng, jitter=0.3), _noisy(truth, rng, jitter=0.03)
    for dets in (sloppy, sharp):
        coco, m = coco_map(truth, dets, CLASSES), match(truth, dets, CLASSES)
        ones = np.ones(len(truth))
        assert round(weighted_map(m, ones), 4) == coco["map"] and round(weighted_map(m, ones, iou50=True), 4) == coco["map50"]
    twice = np.r_[np.full(30, 2.0), np.zeros(30)]  # the first half counted twice is the first half
    first = coco_map(truth[:30], sloppy[:30], CLASSES)["map"]
    assert round(weighted_map(match(truth, sloppy, CLASSES), twice), 4) == first
    better = paired_bootstrap(truth, sloppy, sharp, CLASSES, iou50=False, resamples=200)
    assert better["diff"] > 0 and better["low"] > 0 and better["low"] <= better["diff"] <= better["high"], better
    same = paired_bootstrap(truth, sharp, sharp, CLASSES, resamples=50)
    assert same["diff"] == same["low"] == same["high"] == 0.0
    part = paired_bootstrap(truth, sloppy, sharp, CLASSES, images=range(10), resamples=50)
    assert part["frames"] == 10 and part["boxes"] == sum(len(b) for b in truth[:10])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(truth, sloppy, sharp, CLASSES, confidence=1.5)


def test_augmentation_moves_the_boxes_with_the_pixels():
    import albumentations as A

    from flywheel.detection.augment import augment, box_pipeline

    images, boxes = scenes(60, seed=5, side=48)
    single = [(img, b) for img, b in zip(images, boxes, strict=True) if len(b) == 1]  # no rectangle over another
    pipeline = box_pipeline(A.Compose([]), seed=0)  # geometry only: the colours stay
    moved = 0
    for img, b in single:
        out, got = augment(pipeline, img, b)
        assert out.shape == img.shape and len(got) <= 1
        for c, x, y, w, h in got:
            inner = out[:, int(y) + 2 : int(y + h) - 1, int(x) + 2 : int(x + w) - 1]
            assert inner.size and (np.abs(inner.astype(int) - np.array(COLOURS[c])[:, None, None]).max(axis=0) < 40).mean() > 0.9
            moved += not np.allclose((x, y, w, h), b[0][1:], atol=0.5)
    assert moved >= len(single) // 2  # most draws flip, scale or shift
