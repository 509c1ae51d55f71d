"""The engine's labels stage for one fleet batch: auto-label the sure frames, queue the most useful rest.

    frames -> champion (probs, embeddings) -> confident: auto-labels (via labels.build_labels)
                                           -> the rest: select_for_labeling(budget) -> labeling/queue/<batch>.json
    labeling/done/*.json (human answers) + auto-labels -> labels/batch=<id>/ (ground truth hidden)
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import torch

from flywheel.config import EngineSettings
from flywheel.engine.autolabel import (
    champion_autolabeler,
    decode_images,
    embed_and_predict,
    hide_ground_truth,
)
from flywheel.engine.queue import write_queue
from flywheel.engine.select import select_for_labeling
from flywheel.labels import build_labels, load_label_studio_exports
from flywheel.store import Store


def queue_batch(
    store: Store,
    batch_id: str,
    frames: pa.Table,
    *,
    classes: list[str],
    champion: torch.nn.Module | ort.InferenceSession | None,
    image_size: int,
    engine: EngineSettings,
    model_version: str | None = None,
) -> dict:
    """Pick at most `engine.label_budget` frames of a batch for humans and write their Label Studio queue.

    With a champion: only frames it is unsure of (< auto_threshold) are candidates, chosen by
    `engine.strategy`, pre-annotated with its guess. Without one: a uniform random sample.
    """
    fids = frames.column("frame_id").to_pylist()
    if not fids:
        raise ValueError(f"batch {batch_id} has no frames to queue")
    if champion is None:
        rng = np.random.default_rng([engine.seed, *batch_id.encode()])
        chosen = rng.choice(len(fids), size=min(engine.label_budget, len(fids)), replace=False)
        key = write_queue(store, batch_id, frames, [fids[i] for i in chosen], image_url_prefix=engine.image_url_prefix)
        return {"key": key, "queued": len(chosen), "candidates": len(fids), "strategy": "random (no champion)"}
    images = decode_images(frames.column("image").to_pylist(), image_size, frame_ids=fids)
    probs, emb = embed_and_predict(champion, images)
    unsure = np.flatnonzero(probs.max(axis=1) < engine.auto_threshold)
    meta = {"condition": [frames.column("condition")[int(i)].as_py() for i in unsure]}
    picks = unsure[select_for_labeling(probs[unsure], emb[unsure], meta, budget=engine.label_budget,
                                       strategy=engine.strategy, seed=engine.seed)]  # fmt: skip
    predictions = [(classes[int(probs[i].argmax())], float(probs[i].max())) for i in picks]
    key = write_queue(store, batch_id, frames, [fids[i] for i in picks], predictions, model_version=model_version,
                      image_url_prefix=engine.image_url_prefix)  # fmt: skip
    return {"key": key, "queued": len(picks), "candidates": len(unsure), "strategy": engine.strategy,
            "queued_by_condition": dict(Counter(meta["condition"][j] for j in np.searchsorted(unsure, picks)))}  # fmt: skip


def engine_labels(
    store: Store,
    frames: pa.Table,
    *,
    classes: list[str],
    session: ort.InferenceSession | None,
    manifest: dict | None,
    engine: EngineSettings,
) -> tuple[pa.Table, dict]:
    """Labels of a batch when the engine is on: human answers from labeling/done/ + champion auto-labels.

    The clip's ground truth is hidden first, so it cannot become a training label.
    """
    auto = champion_autolabeler(session, manifest) if session is not None else None
    return build_labels(hide_ground_truth(frames), classes=classes, human_exports=load_label_studio_exports(store),
                        auto_labeler=auto, auto_threshold=engine.auto_threshold)  # fmt: skip
