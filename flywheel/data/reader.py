"""The training reader: a torch IterableDataset over a dataset manifest (DESIGN.md §3).

Order of one epoch, for one rank:
  1. the samples of the split, as row groups ("blocks") in manifest order;
  2. train: blocks permuted by (seed, epoch), so each rank reads whole row groups;
  3. cut to an equal count per rank, so DDP never waits on a rank that ran dry:
     drop the remainder (train default) or pad by repeating the first samples (eval default;
     the padded repeats are scored twice, so exact evaluation uses world_size=1 or load_arrays);
  4. rank r takes the r-th contiguous slice;
  5. train: a shuffle buffer of `buffer_size` samples seeded by (seed, epoch, rank).
The resulting sequence is dealt to DataLoader workers in whole batches of `batch_size`
(batch k to worker k % num_workers): the DataLoader collects each worker's batches round-robin,
so set `batch_size` to the DataLoader's and its output is the same sequence for any num_workers.
With `batched=True` the reader yields those batches itself, as (B, 3, S, S) uint8 and (B,) int64
tensors decoded straight into one array, for a DataLoader with `batch_size=None` (training's
`make_loader` does this): no per-sample dicts to collate, and `meta=False` leaves out the strings.
Resuming skips the first `consumed` samples of that sequence, so the rest comes in the same order.

Opening a reader checks the shards it will read against their manifest's sha256
(`dataset.check_shards`, hashed once per process), so a rewritten shard fails the step loudly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from flywheel.data.augment import online_transform
from flywheel.data.dataset import check_shards
from flywheel.model_input import decode_image, decode_into
from flywheel.store import Store

META = ("frame_id", "trigger", "condition", "camera", "clip_id", "label_source")
DECODE = ("image", "label", "height", "width", "frame_id")  # what a sample needs (frame_id: to name a bad one)


class ShardReader(IterableDataset):
    """Samples {"image": uint8 (3, S, S), "label": int64, "frame_id", "trigger", ...} of a manifest."""

    def __init__(
        self,
        store: Store,
        manifest: dict,
        *,
        split: str = "train",
        image_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = 1024,
        train_aug: bool = True,
        geometric: bool = False,
        frame_ids: Sequence[str] | None = None,
        batch_size: int = 1,
        drop_remainder: bool | None = None,
        batched: bool = False,
        meta: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1 or buffer_size < 1:
            raise ValueError(
                f"batch_size and buffer_size must be >= 1, got {batch_size}, {buffer_size}"
            )
        self.store, self.manifest = store, manifest
        self.image_size, self.rank, self.world_size, self.seed = image_size, rank, world_size, seed
        self.shuffle, self.buffer_size, self.batch_size = shuffle, buffer_size, batch_size
        self.batched, self.meta = batched, meta
        self.drop_remainder = shuffle if drop_remainder is None else drop_remainder
        self.transform = online_transform(image_size, train=train_aug, geometric=geometric)
        if frame_ids is None:
            self.shards = [s for s in manifest["shards"] if s["split"] == split]
            check_shards(store, manifest, self.shards)
            self.blocks, self.locations = _blocks(self.shards)
        else:
            self.shards = list(manifest["shards"])
            self.blocks, self.locations = _locate(store, self.shards, frame_ids)
            # only the shards that hold the frames: a few golden frames must not hash the whole dataset
            used = sorted(set(self.locations[:, 0].tolist()))
            check_shards(store, manifest, [self.shards[i] for i in used])
            self.shuffle = False  # an explicit list is read in its own order
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples to skip)
        self._taken = 0  # samples yielded in this process since the iterator started

    # -- order ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Samples per rank per epoch; batches when the reader yields batches (what a DataLoader counts)."""
        n = self.num_samples()
        return math.ceil(n / self.batch_size) if self.batched else n

    def num_samples(self) -> int:
        """Samples per rank per epoch."""
        n = len(self.locations)
        return n // self.world_size if self.drop_remainder else math.ceil(n / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_order(self, epoch: int | None = None) -> np.ndarray:
        """Global sample indices this rank reads in `epoch`, in order (before a resume skip)."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            seq = np.concatenate(
                [self.blocks[b] for b in rng.permutation(len(self.blocks))]
                or [np.zeros(0, np.int64)]
            )
        else:
            seq = np.concatenate(self.blocks or [np.zeros(0, np.int64)])
        per = self.num_samples()
        if not self.drop_remainder and len(seq):
            seq = np.resize(seq, per * self.world_size)  # pad by repeating from the start
        mine = seq[self.rank * per : (self.rank + 1) * per]
        if self.shuffle:
            mine = _buffer_shuffle(
                mine, self.buffer_size, np.random.default_rng([self.seed, epoch, self.rank, 1])
            )
        return mine

    def _worker_order(self) -> np.ndarray:
        order = self.rank_order()
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] :]
        info = get_worker_info()
        if info is None or info.num_workers == 1:
            return order
        batch_of = np.arange(len(order)) // self.batch_size
        return order[batch_of % info.num_workers == info.id]

    # -- samples -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        return self._batches() if self.batched else self._samples()

    def _batches(self) -> Iterator[dict]:
        """The worker's samples in consecutive batches of `batch_size` (the last may be short), each
        decoded straight into its batch array: no per-sample dict, tensor or generator step."""
        self._taken = 0
        size, b, cache = self.image_size, self.batch_size, self._cache()
        order = self._worker_order()
        train = self.transform.train
        transform = self.transform if self.transform.compose is not None else None  # else a bare resize
        for start in range(0, len(order), b):
            chunk = order[start : start + b]
            images = np.empty((len(chunk), 3, size, size), np.uint8)
            labels: list[int] = []
            meta: dict[str, list[str]] = {m: [] for m in META} if self.meta else {}
            for out, g, (shard, group, row) in zip(images, chunk.tolist(), self.locations[chunk].tolist(), strict=True):
                cols = cache.groups.get((shard, group)) or cache.get(shard, group)
                if train:
                    self.transform.set_random_seed(_sample_seed(self.seed, self.epoch, g))
                decode_into(out, cols["image"][row], size, transform=transform,
                            height=cols["height"][row], width=cols["width"][row], where=cols["frame_id"][row])  # fmt: skip
                labels.append(cols["label_list"][row])
                for m, values in meta.items():
                    values.append(cols[m][row])
            self._taken += len(chunk)
            yield {"image": torch.from_numpy(images), "label": torch.tensor(labels, dtype=torch.int64), **meta}

    def _samples(self) -> Iterator[dict]:
        self._taken = 0
        cache = self._cache()
        order = self._worker_order()
        train = self.transform.train
        # Python ints, not numpy rows: this loop runs once per sample
        for g, (shard, group, row) in zip(
            order.tolist(), self.locations[order].tolist(), strict=True
        ):
            cols = cache.get(shard, group)
            if train:  # per-sample seed: the same augmentation for any num_workers or resume
                self.transform.set_random_seed(_sample_seed(self.seed, self.epoch, g))
            image = decode_image(cols["image"][row], self.image_size, transform=self.transform,
                                 height=cols["height"][row], width=cols["width"][row],
                                 where=cols["frame_id"][row])  # fmt: skip
            self._taken += 1
            sample = {"image": torch.from_numpy(image), "label": cols["label"][row]}  # (3, S, S) uint8, 0-d int64
            if self.meta:
                sample.update({m: cols[m][row] for m in META})
            yield sample

    def _cache(self) -> _RowGroupCache:
        group_rows = max(1, int(self.manifest.get("row_group_rows", 256)))
        # the buffer spans ~buffer_size/group_rows row groups; keep twice that (plus slack) open
        return _RowGroupCache(
            self.store, self.shards, capacity=2 * math.ceil(self.buffer_size / group_rows) + 4,
            columns=[*DECODE, *(m for m in META if self.meta and m not in DECODE)],
            label_tensors=not self.batched,
        )  # fmt: skip

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self, samples: int | None = None) -> dict:
        """Where this rank is: `samples` taken from the current epoch's iterator (None: counted
        here, right with num_workers=0; with workers pass batches taken x batch_size)."""
        skipped = (
            self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0
        )
        taken = self._taken if samples is None else samples
        return {"epoch": self.epoch, "consumed": skipped + taken, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "samples": self.num_samples()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue `state`'s epoch after its consumed samples, in the same order."""
        for key in ("seed", "world_size", "samples"):
            mine = {"seed": self.seed, "world_size": self.world_size, "samples": self.num_samples()}[key]
            if state[key] != mine:
                raise ValueError(
                    f"reader state has {key}={state[key]}, this reader {mine}: the order would differ"
                )
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["consumed"]))
        self._taken = 0


def load_arrays(store: Store, manifest: dict, *, split: str | None = None,
                frame_ids: Sequence[str] | None = None,
                image_size: int) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:  # fmt: skip
    """A whole split (or a frame_id list, in its order) as arrays, for evaluation:
    images uint8 (N, 3, S, S), labels int64 (N,), meta {frame_id|trigger|...: list of N str}."""
    if (split is None) == (frame_ids is None):
        raise ValueError("load_arrays needs exactly one of split and frame_ids")
    reader = ShardReader(store, manifest, split=split or "test", frame_ids=frame_ids, image_size=image_size,
                         shuffle=False, train_aug=False, drop_remainder=False, batch_size=256, batched=True)  # fmt: skip
    n = reader.num_samples()
    images = np.empty((n, 3, image_size, image_size), np.uint8)
    labels = np.empty(n, np.int64)
    meta: dict[str, list[str]] = {m: [] for m in META}
    at = 0
    for batch in reader:
        k = len(batch["label"])
        images[at : at + k], labels[at : at + k] = batch["image"].numpy(), batch["label"].numpy()
        for m in META:
            meta[m] += batch[m]
        at += k
    return images, labels, meta


class _RowGroupCache:
    """The last few row groups read, `columns` as Python lists; labels as 0-d int64 tensors under
    "label" with `label_tensors` (per-sample reading), else as ints under "label_list" (batched).
    The oldest read is evicted first (the reader's window slides forward, so FIFO does as well as
    LRU, for less work)."""

    def __init__(self, store: Store, shards: list[dict], capacity: int, *, columns: list[str],
                 label_tensors: bool = True):  # fmt: skip
        self.store, self.shards, self.capacity = store, shards, capacity
        self.columns, self.label_tensors = columns, label_tensors
        self.files: dict[int, object] = {}
        self.groups: dict[tuple[int, int], dict] = {}

    def get(self, shard: int, group: int) -> dict:
        cols = self.groups.get((shard, group))
        if cols is not None:
            return cols
        if shard not in self.files:
            self.files[shard] = self.store.parquet_file(self.shards[shard]["path"])
        table = self.files[shard].read_row_group(group, columns=self.columns)
        cols = {c: table.column(c).to_pylist() for c in self.columns if c != "label"}
        if self.label_tensors:  # 0-d int64 tensors viewing one buffer: one allocation per group, not per sample
            cols["label"] = torch.from_numpy(table.column("label").to_numpy().astype(np.int64)).unbind(0)
        else:
            cols["label_list"] = table.column("label").to_pylist()
        self.groups[(shard, group)] = cols
        if len(self.groups) > self.capacity:
            del self.groups[next(iter(self.groups))]
        return cols


def _blocks(shards: list[dict]) -> tuple[list[np.ndarray], np.ndarray]:
    """Row groups as arrays of global sample indices, and each sample's (shard, group, row)."""
    blocks, locations, g = [], [], 0
    for s, shard in enumerate(shards):
        for r, n in enumerate(shard["row_groups"]):
            blocks.append(np.arange(g, g + n, dtype=np.int64))
            locations.extend((s, r, i) for i in range(n))
            g += n
    return blocks, np.array(locations, np.int64).reshape(-1, 3)


def _locate(
    store: Store, shards: list[dict], frame_ids: Sequence[str]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Blocks/locations for an explicit frame_id list (e.g. the golden set), in that order."""
    where: dict[str, tuple[int, int, int]] = {}
    for s, shard in enumerate(shards):
        pf = store.parquet_file(shard["path"])
        for r in range(pf.num_row_groups):
            for i, fid in enumerate(
                pf.read_row_group(r, columns=["frame_id"]).column(0).to_pylist()
            ):
                where[fid] = (s, r, i)
    missing = [f for f in frame_ids if f not in where]
    if missing:
        raise ValueError(
            f"{len(missing)} frame_id(s) are in none of the manifest's shards: {missing[:5]}"
        )
    locations = np.array([where[f] for f in frame_ids], np.int64).reshape(-1, 3)
    return [np.arange(len(frame_ids), dtype=np.int64)], locations


def _buffer_shuffle(seq: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """What a streaming shuffle buffer of `size` emits for input `seq` (computed on indices)."""
    out = np.empty_like(seq)
    buf = seq[:size].tolist()
    # the buffer stays full while input remains, so every slot pick is uniform in [0, size)
    picks = rng.integers(0, len(buf), max(len(seq) - size, 0)).tolist() if buf else []
    for n, (x, j) in enumerate(zip(seq[size:].tolist(), picks, strict=True)):
        out[n], buf[j] = buf[j], x
    rest = np.array(buf, dtype=seq.dtype)
    out[len(picks) :] = rest[rng.permutation(len(rest))]
    return out


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{index}".encode()).digest()[:4], "little")
