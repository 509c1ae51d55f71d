"""Novelty: how unlike the deployed model's training data a clip looks, to the model itself.

Confidence is a poor guide to what a young model lacks: it can be surest where it is wrong (the
data engine benchmark found early models more confident on fog than on day). Novelty asks another
question: is there anything like this clip in the training set? A frame's novelty is one minus the
mean cosine similarity of its embedding to its `NEIGHBOURS` nearest reference frames, a seeded
sample of the training originals of the dataset version the champion was trained on. Sparse
regions of the training set (a rare condition, an unseen place) score high, dense ones low.

A clip's novelty is the mean over its frames. The threshold is calibrated on the reference itself,
clip by clip, each scored against the reference frames of *other* clips (a clip's own frames are
near-copies of each other): the `1 - share` quantile, so about `share` of clips like the training
set's are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flywheel import layout
from flywheel.data import dataset
from flywheel.data.reader import load_arrays
from flywheel.engine.campaigns import originals
from flywheel.predict import predict
from flywheel.store import Store

NOVEL = "novel"  # the upload trigger of a clip flagged by novelty
REFERENCE_FRAMES = 512
NEIGHBOURS = 10


def normalized(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)


def knn_novelty(z: np.ndarray, reference: np.ndarray, k: int = NEIGHBOURS,
                exclude: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """(N,) one minus the mean cosine similarity of each row of `z` (N, D) to its `k` nearest rows of
    `reference` (R, D); both L2-normalized. `exclude` (N, R) bool: pairs left out (a frame's own clip)."""
    sims = z @ reference.T  # (N, R)
    if exclude is not None:
        sims = np.where(exclude, -np.inf, sims)
    k = max(1, min(k, reference.shape[0]))
    top = -np.sort(-sims, axis=1)[:, :k]  # (N, k), the k most similar
    # fewer than k others: the mean of those there are
    top = np.where(np.isfinite(top), top, np.nan)
    return 1.0 - np.nanmean(top, axis=1)


@dataclass(frozen=True)
class NoveltyReference:
    embeddings: np.ndarray  # (R, D) L2-normalized reference frames
    threshold: float  # a clip whose mean novelty reaches this is flagged
    share: float  # about this share of the reference's own clips reach it
    clips: int  # reference clips the threshold was calibrated on
    dataset_version: int

    def clip_novelty(self, embeddings: np.ndarray) -> float:
        """A clip's novelty: the mean of its frames' (embeddings (N, D), not normalized)."""
        return float(knn_novelty(normalized(embeddings), self.embeddings).mean())


def calibrate(
    z: np.ndarray, clips: np.ndarray, share: float, k: int = NEIGHBOURS
) -> tuple[float, int]:
    """The clip-novelty threshold that about `share` of the reference's clips reach, each scored
    against the other clips' frames; and the number of clips. `z` (R, D) normalized, `clips` (R,)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    clips = np.asarray(clips)
    names, inverse = np.unique(clips, return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"novelty needs reference frames from at least 2 clips, got {len(names)}")
    frame_novelty = knn_novelty(z, z, k, exclude=inverse[:, None] == inverse[None, :])
    per_clip = np.bincount(inverse, weights=frame_novelty) / np.bincount(inverse)
    return float(np.quantile(per_clip, 1.0 - share)), len(names)


def reference(store: Store, session, manifest: dict, *, dataset_name: str, share: float,
              frames: int = REFERENCE_FRAMES, seed: int = 0) -> NoveltyReference | None:  # fmt: skip
    """The deployed model's (`session`, its deploy `manifest`) novelty reference: a seeded sample of
    at most `frames` train originals of the dataset version it was trained on (the newest when that
    one is gone), embedded by it. None (no novelty flags) when there is no such version or its train
    split holds fewer than 2 clips."""
    version = (manifest.get("dataset") or {}).get("version")
    if version is None or not store.exists(layout.manifest_key(dataset_name, int(version))):
        # the champion's version is gone: the newest
        version = dataset.latest_version(store, dataset_name)
    if version is None:
        return None
    data = dataset.load_manifest(store, dataset_name, int(version))
    train = {**data, "shards": [s for s in data["shards"] if s["split"] == "train"]}
    if not train["shards"]:
        return None
    # the sample from the metadata alone; only the sampled frames are read and decoded
    fids = originals(store, train).column("frame_id").to_pylist()
    if len(fids) > frames:
        fids = [
            fids[i]
            for i in np.sort(np.random.default_rng(seed).choice(len(fids), frames, replace=False))
        ]
    if len(fids) < 2:
        return None
    images, _, meta = load_arrays(
        store, train, frame_ids=fids, image_size=int(manifest["image_size"])
    )
    clips = np.asarray(meta["clip_id"], dtype=object)
    if len(set(clips)) < 2:
        return None
    z = normalized(predict(session, images, embeddings=True).embeddings)
    threshold, n_clips = calibrate(z, clips, share)
    return NoveltyReference(embeddings=z, threshold=threshold, share=share, clips=n_clips,
                            dataset_version=int(data["version"]))  # fmt: skip
