"""What a model looks at: Grad-CAM maps (captum) of the frames a reviewer should see before trusting
a promotion, as one PNG grid per evaluation.

The frames: in each gated slice, the one the model scores lowest on its true class, and the model's
most confident errors. The map is Grad-CAM at the last residual stage for the predicted class,
upsampled to the input and scaled to [0, 1] per frame, drawn over the frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam

from flywheel.model import FrameClassifier

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def gradcam(model: FrameClassifier, images: np.ndarray, targets: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """Grad-CAM of `targets` (N,) on uint8 frames (N, 3, S, S): float maps (N, S, S) in [0, 1]."""
    if images.ndim != 4 or len(images) != len(targets):
        raise ValueError(f"images must be (N, 3, S, S) with N targets, got {images.shape} and {len(targets)}")
    model = model.eval().to(device)
    x = torch.from_numpy(images).float().to(device)  # the model normalizes raw pixel values itself
    cam = LayerGradCam(model, model.stages[-1])
    attr = cam.attribute(x, target=torch.as_tensor(targets, dtype=torch.long, device=device), relu_attributions=True)
    up = LayerAttribution.interpolate(attr, tuple(images.shape[2:]), interpolate_mode="bilinear")[:, 0]  # (N, S, S)
    up = up.detach().cpu().numpy()
    peak = up.reshape(len(up), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(up, peak, out=np.zeros_like(up), where=peak > 0)


def pick_frames(probs: np.ndarray, labels: np.ndarray, slices: Mapping[str, Sequence[str]], *,
                min_slice_frames: int, errors: int = 8, limit: int = 16) -> list[tuple[int, str]]:  # fmt: skip
    """(frame index, why) of the frames to show: the lowest-scored frame of each slice with at least
    `min_slice_frames` frames, then the `errors` most confident errors; at most `limit`, no repeats."""
    true_p = probs[np.arange(len(labels)), labels]  # (N,) probability of the true class
    picked: dict[int, str] = {}
    for column, values in sorted(slices.items()):
        values = np.asarray([str(v) for v in values])
        for value in np.unique(values).tolist():
            idx = np.flatnonzero(values == value)
            if len(idx) >= min_slice_frames:
                worst = int(idx[np.argmin(true_p[idx])])
                picked.setdefault(worst, f"lowest in {column}={value}")
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    for i in wrong[np.argsort(-probs[wrong].max(1))][:errors].tolist():
        picked.setdefault(int(i), f"confident error {probs[i].max():.2f}")
    return list(picked.items())[:limit]


def saliency_png(images: np.ndarray, maps: np.ndarray, captions: Sequence[str], *, tile: int = 128) -> bytes:
    """A PNG grid: each frame (uint8 (3, S, S)) with its map (S, S) drawn over it, captioned."""
    if len(images) == 0:
        raise ValueError("saliency_png needs at least one frame")
    cols = math.ceil(math.sqrt(len(images)))
    rows, band = math.ceil(len(images) / cols), 24
    canvas = np.full((rows * (tile + band), cols * tile, 3), 255, np.uint8)
    for k, (img, cam, text) in enumerate(zip(images, maps, captions, strict=True)):
        bgr = cv2.resize(cv2.cvtColor(img.transpose(1, 2, 0), cv2.COLOR_RGB2BGR), (tile, tile), interpolation=cv2.INTER_NEAREST)
        heat = cv2.applyColorMap(cv2.resize((cam * 255).astype(np.uint8), (tile, tile)), cv2.COLORMAP_JET)
        r, c = divmod(k, cols)
        y, x = r * (tile + band), c * tile
        canvas[y : y + tile, x : x + tile] = cv2.addWeighted(bgr, 0.55, heat, 0.45, 0)
        for line, part in enumerate(text.split("\n")[:2]):
            cv2.putText(canvas, part[: tile // 4], (x + 2, y + tile + 10 + 10 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.28,
                        (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError("the saliency grid cannot be encoded as PNG")
    return png.tobytes()
