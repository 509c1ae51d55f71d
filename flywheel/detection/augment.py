"""Box-aware augmentation for the detector: albumentations with `BboxParams`, so boxes move with the pixels.

The geometric part is the detector's own: a horizontal flip, and scaling and shifting on a constant
border (the classifier's geometric pipeline reflects the border, which would show mirrored objects
that have no box). Rotation is left out: a rotated box's axis-aligned hull is larger than the object.
The photometric part is the project's default (`augment_default.yaml`) or any `A.Compose` given.
A box less than 30 % visible after a shift is dropped; what sticks out is clipped to the frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from flywheel.data.augment import load_pipeline  # noqa: E402

MIN_VISIBILITY = 0.3


def box_pipeline(photometric: A.Compose | None = None, *, seed: int = 0) -> A.Compose:
    """Flip, scale and shift with the boxes, then `photometric` (None: the project's default pipeline)."""
    geometric = [A.HorizontalFlip(p=0.5),
                 A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT, p=0.7)]  # fmt: skip
    photometric = photometric if photometric is not None else load_pipeline()
    boxes = A.BboxParams(format="coco", label_fields=["classes"], min_visibility=MIN_VISIBILITY, clip=True)
    return A.Compose([*geometric, *photometric.transforms], bbox_params=boxes, seed=seed)


def augment(pipeline: A.Compose, image: np.ndarray, boxes: Sequence[tuple]) -> tuple[np.ndarray, list[tuple]]:
    """One model-input image (3, S, S) uint8 and its boxes [(class, x, y, w, h)], transformed together."""
    out = pipeline(image=np.ascontiguousarray(image.transpose(1, 2, 0)), bboxes=np.array([b[1:] for b in boxes],
                   dtype=np.float32).reshape(-1, 4), classes=[b[0] for b in boxes])  # fmt: skip
    moved = [(int(c), *(float(v) for v in bb)) for c, bb in zip(out["classes"], out["bboxes"], strict=True)]
    return np.ascontiguousarray(out["image"].transpose(2, 0, 1)), [b for b in moved if b[3] > 0 and b[4] > 0]
