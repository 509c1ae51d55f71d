"""Saliency: Grad-CAM looks where the label is, and the evaluation shows the frames that matter."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from flywheel.evaluation import saliency
from flywheel.model import load_weights
from flywheel.training.train import TrainConfig, train

SIZE, CLASSES = 32, ["red", "green", "blue"]
SQUARE = (slice(20, 28), slice(4, 12))  # rows, columns of the square that carries the label


def _frames(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise, and at a fixed place a square whose colour is the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(90, 140, (n, 3, SIZE, SIZE)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, :, SQUARE[0], SQUARE[1]] = 40
        images[i, y, SQUARE[0], SQUARE[1]] = 230
    return images, labels


def test_gradcam_mass_sits_on_the_square_that_carries_the_label():
    x, y = _frames(384, seed=0)
    batches = [{"image": torch.from_numpy(x[i : i + 32]), "label": torch.from_numpy(y[i : i + 32])}
               for i in range(0, len(y), 32)]  # fmt: skip
    # Grad-CAM as published weighs the last map by its pooled gradients: the pooled head it was made for
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, width=8, depth=1, image_size=SIZE, device="cpu", head="pool")
    model, _ = load_weights(train(train_loader=batches, classes=CLASSES, cfg=cfg).weights)
    tx, ty = _frames(32, seed=1)
    maps = saliency.gradcam(model, tx, ty)
    assert maps.shape == (32, SIZE, SIZE) and maps.min() >= 0 and np.isclose(maps.max(), 1)
    # Grad-CAM's grid is 8x8 here (4 px cells, upsampled): the square and one cell around it
    near = maps[:, 16:32, 0:16].sum() / maps.sum()
    area = (16 * 16) / (SIZE * SIZE)  # a quarter of the frame
    assert near > 0.6, f"{near:.2f} of the saliency on {area:.2f} of the frame around the square"


def test_pick_frames_takes_each_slices_worst_then_confident_errors():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.05, 0.95], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 0, 1])
    slices = {"condition": ["day", "day", "fog", "fog", "rain"]}
    picked = saliency.pick_frames(probs, labels, slices, min_slice_frames=2, errors=2)
    assert picked == [(1, "lowest in condition=day"), (3, "lowest in condition=fog"),
                      (4, "confident error 0.70")]  # fmt: skip  (rain: 1 frame, too few; 3 is already in)


def test_saliency_grid_is_a_png_with_one_tile_per_frame():
    x, _ = _frames(5, seed=2)
    png = saliency.saliency_png(x, np.random.default_rng(0).random((5, SIZE, SIZE)), ["a\nb"] * 5, tile=32)
    grid = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert grid.shape == (2 * (32 + 24), 3 * 32, 3)
