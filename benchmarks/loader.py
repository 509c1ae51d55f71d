"""Data benchmarks: the shard reader against common loading patterns, and append vs rebuild.

Loader: images per CPU-second of this process (user + system time, best of 5 interleaved passes).
Every loader path does the same per-image work (decode, BGR->RGB, resize to S x S, HWC->CHW,
uint8 tensor, default_collate in batches of 64), in one process on one core, on the same JPEG
bytes; only how the bytes reach the decoder differs. The ceiling decodes the bytes from memory.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from flywheel import layout
from flywheel.data.dataset import append_version
from flywheel.data.reader import ShardReader
from flywheel.data.schema import DATASET
from flywheel.model_input import decode_image, decode_into
from flywheel.store import open_store

CLASSES = ["c0", "c1", "c2", "c3"]
BATCH = 64  # samples per default_collate call, as in training
REPEATS = 9  # timed passes per path; the best is reported (the others absorb warm-up and noise)


def synthetic_rows(n: int, *, batch_id: str = "b0", seed: int = 0, height: int = 72,
                   width: int = 96, split: str = "train") -> pa.Table:  # fmt: skip
    """`n` dataset rows of JPEG frames the size of the simulator's (smooth scene + noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rows = []
    for i in range(n):
        base = (xx * rng.uniform(0.5, 2.5) + yy * rng.uniform(0.5, 2.5)) % 255
        img = np.stack([base, base[::-1], 255 - base], -1) + rng.normal(0, 8, (height, width, 3))
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), int(rng.integers(4, 16))
        img = np.clip(img, 0, 255).astype(np.uint8)
        cv2.circle(img, (int(cx), int(cy)), r, tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        clip = f"{batch_id}-clip{i // 16}"
        rows.append({
            "frame_id": f"{clip}/front/{i % 16}", "clip_id": clip, "vehicle_id": "v1",
            "trigger": "random", "condition": "day", "camera": "front", "timestamp_ns": i,
            "image": enc.tobytes(), "height": height, "width": width, "label": i % len(CLASSES),
            "label_source": "ground_truth", "label_confidence": 1.0, "split": split,
            "augmentation": "",
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=DATASET)


class _ImageFolder(Dataset):
    """torchvision ImageFolder's pattern: a list of (path, class); open and decode per item."""

    def __init__(self, root: Path, image_size: int):
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [
            (str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())
        ]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        path, label = self.samples[i]
        with open(path, "rb") as f:
            image = decode_image(f.read(), self.image_size)
        return {"image": torch.from_numpy(image), "label": torch.tensor(label, dtype=torch.int64)}


class _TarStream(IterableDataset):
    """WebDataset's pattern: read a tar sequentially, group members by key, decode."""

    def __init__(self, path: Path, image_size: int):
        self.path, self.image_size = path, image_size

    def __iter__(self):
        with tarfile.open(self.path, mode="r|") as tar:
            sample: dict = {}
            for member in tar:
                key, ext = member.name.rsplit(".", 1)
                data = tar.extractfile(member).read()
                if sample and sample["key"] != key:
                    yield self._decode(sample)
                    sample = {}
                sample["key"], sample[ext] = key, data
            if sample:
                yield self._decode(sample)

    def _decode(self, sample: dict) -> dict:
        image = decode_image(sample["jpg"], self.image_size)
        return {
            "image": torch.from_numpy(image),
            "label": torch.tensor(int(sample["cls"]), dtype=torch.int64),
        }


def bench_loader(workdir: str | os.PathLike, *, frames: int = 2000, image_size: int = 64) -> dict:
    """Images per CPU-second (one process, one thread) into uint8 (B, 3, S, S) batches: shard
    reader vs file folder, tar, and the in-memory decode ceiling, on the same JPEG bytes."""
    work = Path(workdir)
    shutil.rmtree(work / "bench_loader", ignore_errors=True)
    root = work / "bench_loader"
    rows = synthetic_rows(frames)
    images, labels = rows.column("image").to_pylist(), rows.column("label").to_pylist()

    store = open_store(str(root / "store"))
    manifest = append_version(store, name="bench", batches={"b0": rows}, classes=CLASSES)
    folder = _write_folder(root / "folder", images, labels)
    tar_path = _write_tar(root / "shards.tar", images, labels)

    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # one core: figures are per core
    try:

        def reader(train_aug: bool, batched: bool = False, workers: int = 0):
            shard_reader = ShardReader(store, manifest, image_size=image_size, batch_size=BATCH, train_aug=train_aug,
                                       batched=batched, meta=not batched)  # fmt: skip
            return DataLoader(shard_reader, batch_size=None if batched else BATCH, num_workers=workers,
                              persistent_workers=workers > 0)  # as training's make_loader  # fmt: skip

        paths = {
            "decode_only": lambda: _decode_only(images),
            "ceiling": lambda: _ceiling(images, labels, image_size),
            "shard_reader": lambda: _drain(reader(train_aug=False)),
            "shard_reader_train_aug": lambda: _drain(reader(train_aug=True)),
            "shard_reader_batched": lambda: _drain(reader(train_aug=False, batched=True)),
            "shard_reader_batched_train_aug": lambda: _drain(reader(train_aug=True, batched=True)),
            "image_folder": lambda: _drain(DataLoader(_ImageFolder(folder, image_size),
                                                      batch_size=BATCH, shuffle=True)),
            "tar_stream": lambda: _drain(DataLoader(_TarStream(tar_path, image_size),
                                                    batch_size=BATCH)),
        }  # fmt: skip
        best = dict.fromkeys(paths, float("inf"))
        for _ in range(REPEATS):  # paths interleaved: load spikes on the machine hit all of them
            for name, run in paths.items():
                best[name] = min(best[name], _timed(name, run, frames))
        rates = {name: round(frames / s, 1) for name, s in best.items()}
        # DataLoader workers: wall time (the workers' CPU is not this process's), training's batched reader
        # (persistent, as in training: the workers start in the first, untimed epoch)
        wall = {}
        for w in (0, 2):
            loader = reader(train_aug=True, batched=True, workers=w)
            _drain(loader)
            wall[w] = min(_wall(lambda loader=loader: _drain(loader), frames) for _ in range(3))
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    shutil.rmtree(root, ignore_errors=True)
    return {
        "frames": frames,
        "image_size": image_size,
        "source_size": [
            int(rows.column("height")[0].as_py()),
            int(rows.column("width")[0].as_py()),
        ],
        "jpeg_bytes_mean": round(sum(map(len, images)) / frames, 1),
        "images_per_s_per_core": rates,
        "reader_vs_ceiling": round(rates["shard_reader"] / rates["ceiling"], 3),
        "batched_reader_vs_ceiling": round(rates["shard_reader_batched"] / rates["ceiling"], 3),
        "batched_train_aug_wall_images_per_s": {f"{w} workers": round(frames / t, 1) for w, t in wall.items()},
        "two_workers_vs_none": round(wall[0] / wall[2], 3),
        "reader_vs_image_folder": round(rates["shard_reader"] / rates["image_folder"], 3),
        "reader_vs_tar": round(rates["shard_reader"] / rates["tar_stream"], 3),
        "cpu": platform.processor() or platform.machine(),
        "cores_used": 1,
    }


def bench_append(
    workdir: str | os.PathLike, *, batches: int = 10, frames_per_batch: int = 400
) -> dict:
    """Wall seconds (best of 5) and bytes written to add one batch (10% new data) to a dataset as
    a new version, vs rebuilding the dataset with it from scratch."""
    work = Path(workdir)
    shutil.rmtree(work / "bench_append", ignore_errors=True)
    store = open_store(str(work / "bench_append"))
    data = {
        f"b{i:03d}": synthetic_rows(frames_per_batch, batch_id=f"b{i:03d}", seed=i)
        for i in range(batches + 1)
    }
    new = f"b{batches:03d}"
    old = {k: v for k, v in data.items() if k != new}
    append_s = rebuild_s = float("inf")
    for r in range(REPEATS):  # best of REPEATS wall-clock runs, each on fresh datasets
        append_version(store, name=f"grow{r}", batches=old, classes=CLASSES)
        t0 = time.perf_counter()
        grown = append_version(store, name=f"grow{r}", batches=data, classes=CLASSES)
        append_s = min(append_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        rebuilt = append_version(store, name=f"rebuild{r}", batches=data, classes=CLASSES)
        rebuild_s = min(rebuild_s, time.perf_counter() - t0)

    manifest_bytes = {
        m["name"]: store.list(layout.manifest_key(m["name"], m["version"]))[0].size
        for m in (grown, rebuilt)
    }
    append_bytes = grown["new_bytes"] + manifest_bytes[grown["name"]]
    rebuild_bytes = sum(s["bytes"] for s in rebuilt["shards"]) + manifest_bytes[rebuilt["name"]]
    shutil.rmtree(work / "bench_append", ignore_errors=True)
    return {
        "rows_before": batches * frames_per_batch,
        "rows_added": frames_per_batch,
        "append_s": round(append_s, 4),
        "rebuild_s": round(rebuild_s, 4),
        "append_bytes": append_bytes,
        "rebuild_bytes": rebuild_bytes,
        "time_ratio": round(append_s / rebuild_s, 3),
        "bytes_ratio": round(append_bytes / rebuild_bytes, 3),
        "shards_reused": len(grown["shards"]) - sum(s["batch"] == new for s in grown["shards"]),
    }


def _write_folder(root: Path, images: list[bytes], labels: list[int]) -> Path:
    """One JPEG file per image under `root/<class>/`, as ImageFolder expects."""
    for i, (data, label) in enumerate(zip(images, labels, strict=True)):
        d = root / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:06d}.jpg").write_bytes(data)
    return root


def _write_tar(path: Path, images: list[bytes], labels: list[int]) -> Path:
    """One tar of `<key>.jpg` + `<key>.cls` members per image, as WebDataset writes them."""
    with tarfile.open(path, "w") as tar:
        for i, (data, label) in enumerate(zip(images, labels, strict=True)):
            for ext, payload in (("jpg", data), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def _timed(name: str, run, frames: int) -> float:
    """CPU seconds of this process (user + system, so file opens and reads count) for one pass of
    loader path `name`: a figure per core that other processes on a shared machine disturb far
    less than wall time does."""
    t0 = time.process_time()
    n = run()
    elapsed = time.process_time() - t0
    if n != frames:
        raise RuntimeError(f"loader path {name!r} yielded {n} images, expected {frames}")
    return elapsed


def _wall(run, frames: int) -> float:
    """Wall seconds of one pass (for paths whose work runs in other processes)."""
    t0 = time.perf_counter()
    n = run()
    if n != frames:
        raise RuntimeError(f"a loader pass yielded {n} images, expected {frames}")
    return time.perf_counter() - t0


def _drain(loader) -> int:
    """Iterate a DataLoader to the end; returns the images it yielded."""
    n = 0
    for batch in loader:
        n += batch["image"].shape[0]  # (B, 3, S, S) uint8
    return n


def _decode_only(images: list[bytes]) -> int:
    """Decode each JPEG from memory, nothing else."""
    for data in images:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return len(images)


def _ceiling(images: list[bytes], labels: list[int], image_size: int) -> int:
    """Decode + resize from memory into the same uint8 (B, 3, S, S) batches, nothing else."""
    out = np.empty((BATCH, 3, image_size, image_size), np.uint8)
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        for j, data in enumerate(chunk):
            decode_into(out[j], data, image_size)
        torch.from_numpy(out[: len(chunk)].copy())
        torch.tensor(labels[start : start + BATCH], dtype=torch.int64)
    return len(images)
