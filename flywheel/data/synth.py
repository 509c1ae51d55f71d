"""Synthetic copies of a scarce condition, made from labeled frames of the common one.

A fleet drives mostly in clear daylight; fog, night and rain come rarely, so a model learns them
from few frames and is worst there. The scene under fog is the same scene: its label does not
change with the weather. So each scarce condition with a synthesizer here gets copies of the
batch's train frames of the most common condition with that condition's physics laid over them
(the way Foggy Cityscapes was made from Cityscapes):

- **fog**: Koschmieder's law, I = J t + A (1 - t): the scene J seen through haze of airlight A
  with transmission t, lower towards the top of the frame (farther away), then a slight blur;
- **night**: a gamma curve and a gain below one (little light), then sensor noise;
- **rain**: albumentations' `RandomRain` streaks over a greyer, blurred frame.

A copy keeps its original's label and clip (so the split by clip holds) and gets the target
condition, frame_id `<orig>#<condition><k>` and `augmentation = "synth-<condition>@<seed>:<k>"`.
Only train rows are copied: val and test measure real frames. Copies are seeded by (seed,
frame_id, condition, k): the same rows and seed give byte-identical copies.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from flywheel.data.schema import DATASET  # noqa: E402

JPEG_QUALITY = 95


def fog(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Haze: transmission from t_near at the bottom row to t_far at the top, airlight a light grey."""
    h = rgb.shape[0]
    t_near = rng.uniform(0.15, 0.5)  # from a light haze to fog a few car lengths deep
    t_far = t_near * rng.uniform(0.2, 0.8)
    t = np.linspace(t_far, t_near, h, dtype=np.float32)[:, None, None]
    airlight = rng.uniform(170.0, 225.0)
    out = rgb.astype(np.float32) * t + airlight * (1.0 - t)
    return cv2.GaussianBlur(out, (5, 5), rng.uniform(0.4, 1.4))


def night(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Little light: a gamma curve, a gain, a cool tint, then sensor noise."""
    x = (rgb.astype(np.float32) / 255.0) ** rng.uniform(1.4, 2.4)
    tint = np.array([0.9, 0.95, 1.1], np.float32) * rng.uniform(0.25, 0.5)
    out = x * tint * 255.0
    return out + rng.normal(0.0, rng.uniform(3.0, 10.0), out.shape).astype(np.float32)


_RAIN = A.Compose([
    A.RandomRain(slant_range=(-10, 10), drop_length=None, drop_width=1, drop_color=(200, 200, 200),
                 blur_value=3, brightness_coefficient=0.8, rain_type="default", p=1.0),
    A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, 1.0), p=1.0),
])  # fmt: skip


def rain(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greyer and darker, then streaks and a blur (albumentations)."""
    grey = rng.uniform(0.15, 0.35)
    flat = (rgb.astype(np.float32) * (1 - grey) + 140.0 * grey).clip(0, 255).astype(np.uint8)
    _RAIN.set_random_seed(int(rng.integers(2**31)))
    return _RAIN(image=flat)["image"].astype(np.float32)


SYNTHESIZERS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "fog": fog,
    "night": night,
    "rain": rain,
}


def plan(rows: pa.Table, share: float) -> tuple[str | None, dict[str, int]]:
    """(source condition, copies per target condition): every condition with a synthesizer below `share`
    of the train originals gets copies up to that share, from the most common condition's frames."""
    if not 0 < share < 1:
        raise ValueError(f"the synthesized share must be in (0, 1), got {share}")
    originals = _train_originals(rows)
    counts = Counter(originals.column("condition").to_pylist())
    if not counts:
        return None, {}
    source = min(counts, key=lambda c: (-counts[c], c))
    target = math.ceil(share * originals.num_rows)
    copies = {c: target - counts.get(c, 0) for c in sorted(SYNTHESIZERS)
              if c != source and counts.get(c, 0) < target}  # fmt: skip
    return source, copies


def synthesize(rows: pa.Table, *, share: float, seed: int = 0) -> pa.Table:
    """Synthetic train copies (schema DATASET) for the scarce conditions of `rows` (dataset rows with
    `split` set): see `plan`. Copies are dealt round-robin over the source frames in a seeded order."""
    source, copies = plan(rows, share)
    if not copies:
        return DATASET.empty_table()
    originals = _train_originals(rows)
    pool = originals.filter(pc.equal(originals.column("condition"), source))
    ids = pool.column("frame_id").to_pylist()
    order = sorted(range(pool.num_rows), key=lambda i: _seed(seed, ids[i], "order", 0))
    take, made = [], []  # source row, (condition, k) of each copy
    for cond, n in copies.items():
        for j in range(n):
            take.append(order[j % len(order)])
            made.append((cond, j // len(order)))
    src = pool.take(pa.array(take, pa.int64())).select(DATASET.names)
    images = [synthesize_image(data, cond, seed=_seed(seed, fid, cond, k), where=fid)
              for data, fid, (cond, k) in zip(src.column("image").to_pylist(), src.column("frame_id").to_pylist(),
                                              made, strict=True)]  # fmt: skip
    columns = {n: src.column(n) for n in DATASET.names}  # label, clip, split and size are the original's
    columns["frame_id"] = pa.array([f"{f}#{c}{k}" for f, (c, k) in zip(src.column("frame_id").to_pylist(), made, strict=True)],
                                   pa.string())  # fmt: skip
    columns["condition"] = pa.array([c for c, _ in made], pa.string())
    columns["image"] = pa.array(images, pa.binary())
    columns["augmentation"] = pa.array([f"synth-{c}@{seed}:{k}" for c, k in made], pa.string())
    return pa.table(columns, schema=DATASET)


def synthesize_image(data: bytes, condition: str, *, seed: int, where: str = "image") -> bytes:
    """Decode a JPEG, lay `condition` over it, re-encode (same size)."""
    if condition not in SYNTHESIZERS:
        raise ValueError(f"no synthesizer for condition {condition!r}; known: {sorted(SYNTHESIZERS)}")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{where}: image bytes cannot be decoded")
    rgb = SYNTHESIZERS[condition](cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.random.default_rng(seed))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"{where}: synthesized image cannot be encoded")
    return enc.tobytes()


def _train_originals(rows: pa.Table) -> pa.Table:
    missing = {"split", "augmentation", "condition", "frame_id", "image"} - set(rows.column_names)
    if missing:
        raise ValueError(f"synthesis needs columns {sorted(missing)} in rows")
    mask = pc.and_(pc.equal(rows.column("split"), "train"), pc.equal(rows.column("augmentation"), ""))
    return rows.filter(mask)


def _seed(seed: int, frame_id: str, condition: str, k: int) -> int:
    digest = hashlib.sha256(f"{seed}/{frame_id}/{condition}/{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
