"""Synthetic data that a small model learns in a few epochs: coloured squares on noise, one colour
per class. For tests about training machinery (DDP, Pipes, retries), where the simulator's scenes
would need 64 px and many epochs before two arms could be told apart from chance."""

import cv2
import numpy as np
import pyarrow as pa

from flywheel.data import dataset
from flywheel.data.schema import DATASET

COLOURS = np.array(
    [[220, 30, 30], [30, 200, 40], [40, 50, 230], [230, 220, 40], [200, 40, 220], [40, 220, 220]]
)


def separable_dataset(store, settings, *, per_split: dict[str, int], seed: int = 0, by: str = "colour") -> dict:
    """A dataset version of synthetic frames that a small model learns in a few epochs.

    The simulator's scenes need 64 px and many epochs to separate; these tests are about training
    machinery, so they use data where a model reaches a clear accuracy quickly. `by`: what the label
    is: the square's `colour`, its `position` (which vertical band of the frame; the colour is
    random), or `nothing` (labels drawn apart from the image: no model can learn them).
    """
    if by not in ("colour", "position", "nothing"):
        raise ValueError(f"by must be colour, position or nothing, got {by!r}")
    rng = np.random.default_rng(seed)
    size, rows = settings.image_size, []
    for split, n in per_split.items():
        for i in range(n):
            label, k = int(rng.integers(len(settings.classes))), len(settings.classes)
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            r, c = rng.integers(0, size - size // 4 + 1, 2)
            colour = COLOURS[(label if by == "colour" else int(rng.integers(len(COLOURS)))) % len(COLOURS)]
            if by == "position":  # the square's left edge in the label's band of the frame
                band = (size - size // 4) / k
                c = int(rng.uniform(label * band, (label + 1) * band))
            img[r : r + size // 4, c : c + size // 4] = colour
            clip = f"{split}-{i // 8}"  # 8 frames per clip, each clip in one split
            rows.append({
                "frame_id": f"{clip}/front/{i % 8}", "clip_id": clip, "vehicle_id": "veh-1", "trigger": "random",
                "condition": "day", "camera": "front", "timestamp_ns": i, "height": size, "width": size,
                "image": cv2.imencode(".png", img[:, :, ::-1])[1].tobytes(), "label": label,
                "label_source": "ground_truth", "label_confidence": 1.0, "split": split, "augmentation": "",
            })  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=DATASET)
    return dataset.append_version(
        store,
        name=settings.dataset.name,
        batches={"synthetic": table},
        classes=settings.classes,
        row_group_rows=32,
    )
