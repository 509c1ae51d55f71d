"""Augmentation: offline oversampling of rare (label, condition) groups, and the online pipeline.

The offline pipeline is an albumentations `Compose` kept in albumentations' own serialized
form (`A.save(..., data_format="yaml")` / `A.load`), so a person can edit the YAML without
touching code. The built-in default is `augment_default.yaml` beside this file: photometric
transforms only, which keep any label. Where the task's labels survive them
(`augment.geometric`), `augment_geometric.yaml`'s flip, rotation, scaling and shifts come first,
and the reader's online pipeline flips too; off by default, because on a task where side,
position, size or a shape's handedness is the label they teach the model the wrong answer. It
leaves out `RandomFog`: about 100x slower than the other transforms at these image sizes.

Only train rows are ever augmented: val/test measure the real distribution. An augmented row
keeps its original's clip_id (so the split-by-clip holds) and gets frame_id `<orig>#aug<k>`
and `augmentation = "<pipeline id>@<seed>:<k>"`.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from flywheel.data.schema import DATASET  # noqa: E402
from flywheel.model_input import resize_square  # noqa: E402

DEFAULT_PIPELINE = Path(__file__).with_name("augment_default.yaml")
GEOMETRIC_PIPELINE = Path(__file__).with_name("augment_geometric.yaml")
JPEG_QUALITY = 95  # augmented copies are re-encoded; 95 keeps artifacts below the noise we add


def load_pipeline(path: str | os.PathLike | None = None, *, geometric: bool = False) -> A.Compose:
    """An albumentations pipeline from its YAML (`A.save` form); None: the built-in default, led by
    the built-in geometric transforms when `geometric`."""
    if path is None and geometric:
        return A.Compose([*_load(GEOMETRIC_PIPELINE).transforms, *_load(DEFAULT_PIPELINE).transforms])
    return _load(Path(path) if path is not None else DEFAULT_PIPELINE)


def _load(source: Path) -> A.Compose:
    if not source.exists():
        raise ValueError(f"augmentation pipeline {source} does not exist")
    try:
        pipeline = A.load(str(source), data_format="yaml")
    except Exception as e:  # albumentations raises KeyError/ValueError/yaml errors alike
        raise ValueError(
            f"augmentation pipeline {source} is not a valid albumentations YAML: {e}"
        ) from e
    if not isinstance(pipeline, A.Compose):
        raise ValueError(f"augmentation pipeline {source}: the top level must be a Compose")
    return pipeline


def save_pipeline(pipeline: A.Compose, path: str | os.PathLike) -> None:
    A.save(pipeline, str(path), data_format="yaml")


def pipeline_id(pipeline: A.Compose) -> str:
    """A short stable id of a pipeline's settings, for the `augmentation` column."""
    return hashlib.sha256(repr(A.to_dict(pipeline)).encode()).hexdigest()[:8]


def plan_copies(rows: pa.Table, *, group_by: Sequence[str] = ("label", "condition"),
                target_share: float, max_copies: int) -> dict[tuple, int]:  # fmt: skip
    """Augmented copies to make per group of train originals: up to target_share x the largest."""
    if not 0.0 <= target_share <= 1.0:
        raise ValueError(f"target_share must be in [0, 1], got {target_share}")
    if max_copies < 0:
        raise ValueError(f"max_copies must be >= 0, got {max_copies}")
    counts = Counter(_group_keys(_train_originals(rows), group_by))
    if not counts:
        return {}
    target = math.ceil(target_share * max(counts.values()))
    return {g: min(max(target - n, 0), n * max_copies) for g, n in sorted(counts.items())}


def oversample(
    rows: pa.Table,
    *,
    group_by: Sequence[str] = ("label", "condition"),
    target_share: float = 0.5,
    max_copies: int = 4,
    seed: int = 0,
    pipeline: A.Compose | None = None,
) -> pa.Table:
    """Augmented copies (schema DATASET) of train originals of rare groups; other rows untouched.

    `rows` are dataset rows (DATASET schema, `split` set). Copies are dealt round-robin over a
    group's rows in frame_id order; copy k of a frame is seeded by (seed, frame_id, k), so the
    output is byte-identical for the same input and seed whatever the row order.
    """
    pipeline = pipeline if pipeline is not None else load_pipeline()
    missing = {"split", "augmentation", "image", "frame_id", *group_by} - set(rows.column_names)
    if missing:
        raise ValueError(f"oversample needs columns {sorted(missing)} in rows")
    plan = plan_copies(rows, group_by=group_by, target_share=target_share, max_copies=max_copies)
    train = _train_originals(rows)
    keys = _group_keys(train, group_by)
    frame_ids = train.column("frame_id").to_pylist()
    by_group: dict[tuple, list[int]] = {}
    for i in sorted(range(train.num_rows), key=frame_ids.__getitem__):
        by_group.setdefault(keys[i], []).append(i)

    take, copy_k = [], []  # source row and copy number of each augmented row
    for g, n_copies in plan.items():
        members = by_group[g]
        for j in range(n_copies):
            take.append(members[j % len(members)])
            copy_k.append(j // len(members))
    if not take:
        return DATASET.empty_table()
    src = train.take(pa.array(take, pa.int64())).select(DATASET.names)
    images, heights, widths = [], [], []
    for data, fid, k in zip(src.column("image").to_pylist(), src.column("frame_id").to_pylist(),
                            copy_k, strict=True):  # fmt: skip
        out = augment_image(data, pipeline, seed=_copy_seed(seed, fid, k), where=fid)
        images.append(out[0])
        heights.append(out[1])
        widths.append(out[2])
    tag = f"{pipeline_id(pipeline)}@{seed}"  # which pipeline and seed made the copy
    columns = {n: src.column(n) for n in DATASET.names}
    columns["frame_id"] = pa.array([f"{f}#aug{k}" for f, k in zip(src.column("frame_id").to_pylist(), copy_k, strict=True)], pa.string())  # fmt: skip
    columns["image"] = pa.array(images, pa.binary())
    columns["height"] = pa.array(heights, pa.int32())
    columns["width"] = pa.array(widths, pa.int32())
    columns["augmentation"] = pa.array([f"{tag}:{k}" for k in copy_k], pa.string())
    return pa.table(columns, schema=DATASET)


def augment_image(
    data: bytes, pipeline: A.Compose, *, seed: int, where: str = "image"
) -> tuple[bytes, int, int]:
    """Decode, augment with a seeded pipeline, re-encode as JPEG: (bytes, height, width)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{where}: image bytes cannot be decoded")
    pipeline.set_random_seed(seed)
    rgb = pipeline(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))["image"]
    ok, enc = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise ValueError(f"{where}: augmented image cannot be encoded")
    return enc.tobytes(), rgb.shape[0], rgb.shape[1]


def balance_report(before: pa.Table, after: pa.Table, *,
                   group_by: Sequence[str] = ("label", "condition")) -> dict:  # fmt: skip
    """Train rows per group before and after oversampling, and each group's share of the largest."""
    b = Counter(_group_keys(_train(before), group_by))
    a = Counter(_group_keys(_train(after), group_by))
    groups = sorted(set(a) | set(b))
    largest_b, largest_a = max(b.values(), default=1), max(a.values(), default=1)
    return {
        "group_by": list(group_by),
        "groups": [
            {
                "group": dict(zip(group_by, g, strict=True)),
                "before": b[g],
                "after": a[g],
                "share_before": round(b[g] / largest_b, 4),
                "share_after": round(a[g] / largest_a, 4),
            }
            for g in groups
        ],
        "rows_before": sum(b.values()),
        "rows_after": sum(a.values()),
        "min_share_before": round(min(b.values(), default=0) / largest_b, 4),
        "min_share_after": round(min(a.values(), default=0) / largest_a, 4),
    }


def sample_grid_png(rows: pa.Table, n: int = 16, *, classes: Sequence[str] | None = None,
                    tile: int = 96) -> bytes:  # fmt: skip
    """A PNG grid of the first `n` rows' images, each captioned with its label (and condition)."""
    rows = rows.slice(0, n)
    if rows.num_rows == 0:
        raise ValueError("sample_grid_png needs at least one row")
    cols = math.ceil(math.sqrt(rows.num_rows))
    grid_rows = math.ceil(rows.num_rows / cols)
    caption = 14  # pixels of text band under each tile
    canvas = np.full((grid_rows * (tile + caption), cols * tile, 3), 255, np.uint8)
    labels = rows.column("label").to_pylist()
    conds = (
        rows.column("condition").to_pylist()
        if "condition" in rows.column_names
        else [""] * rows.num_rows
    )
    for i, data in enumerate(rows.column("image").to_pylist()):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"row {i} of the sample grid: image bytes cannot be decoded")
        r, c = divmod(i, cols)
        y, x = r * (tile + caption), c * tile
        canvas[y : y + tile, x : x + tile] = cv2.resize(
            bgr, (tile, tile), interpolation=cv2.INTER_AREA
        )
        name = classes[labels[i]] if classes is not None else str(labels[i])
        text = f"{name} {conds[i]}".strip()
        cv2.putText(
            canvas,
            text,
            (x + 2, y + tile + 11),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.32,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError("the sample grid cannot be encoded as PNG")
    return png.tobytes()


@dataclass
class OnlineTransform:
    """The per-sample pipeline of the reader: resize to (size, size), then light aug if train.

    Takes and returns RGB uint8 (H, W, 3). Eval is a bare resize (no Compose overhead).
    """

    size: int
    train: bool
    compose: A.Compose | None = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = resize_square(rgb, self.size)
        return self.compose(image=rgb)["image"] if self.compose is not None else rgb

    def set_random_seed(self, seed: int) -> None:
        """Seed the pipeline; one generator pair shared by all its transforms (Compose's own
        set_random_seed builds a pair per transform: 4x slower, and the reader seeds per sample)."""
        if self.compose is None:
            return
        rng, py = np.random.default_rng(seed), random.Random(seed)
        for t in (self.compose, *self.compose.transforms):
            t.random_generator, t.py_random = rng, py


def online_transform(image_size: int, train: bool, *, geometric: bool = False) -> OnlineTransform:
    """Resize to image_size x image_size; when `train`, also jitter brightness lightly, and flip
    when the labels survive it (`geometric`)."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    compose = None
    if train:
        flip = [A.HorizontalFlip(p=0.5)] if geometric else []
        compose = A.Compose(
            [*flip, A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3)]
        )
    return OnlineTransform(image_size, train, compose)


def _train(rows: pa.Table) -> pa.Table:
    return rows.filter(pc.equal(rows.column("split"), "train"))


def _train_originals(rows: pa.Table) -> pa.Table:
    train = _train(rows)
    return train.filter(pc.equal(train.column("augmentation"), ""))


def _group_keys(rows: pa.Table, group_by: Sequence[str]) -> list[tuple]:
    cols = [rows.column(c).to_pylist() for c in group_by]
    return list(zip(*cols, strict=True)) if cols else [()] * rows.num_rows


def _copy_seed(seed: int, frame_id: str, k: int) -> int:
    digest = hashlib.sha256(f"{seed}/{frame_id}/{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little")  # albumentations wants a 32-bit seed
