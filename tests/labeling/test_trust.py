"""Auto labels only where the champion is shown right: a class whose confident guesses on the golden
set were wrong, or too few to tell, gets no auto labels, and its frames may go to people instead."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.config import EngineSettings
from flywheel.labeling.labels import build_labels
from flywheel.labeling.queue import queue_batch
from flywheel.labeling.trust import auto_label_trust
from flywheel.store import LocalStore
from tests.frames import CLASSES, frames_table

A, B, C = CLASSES[:3]


def _probs(top: list[int], confidence: float = 0.95, k: int = 3) -> np.ndarray:
    p = np.full((len(top), k), (1 - confidence) / (k - 1))
    p[np.arange(len(top)), top] = confidence
    return p


def test_a_class_is_trusted_only_when_its_sure_guesses_on_golden_were_right_often_enough():
    # 30 sure guesses of a (27 right), 30 sure guesses of b (15 right), 5 sure guesses of c (all right),
    # and 20 unsure guesses of a that are all wrong: those would not become auto labels, so they do not count
    top = [0] * 30 + [1] * 30 + [2] * 5 + [0] * 20
    truth = [0] * 27 + [1] * 3 + [1] * 15 + [0] * 15 + [2] * 5 + [1] * 20
    probs = np.concatenate([_probs(top[:65]), _probs(top[65:], confidence=0.6)])
    trust = auto_label_trust(probs, np.array(truth), [A, B, C], auto_threshold=0.9, min_precision=0.85, min_support=10)
    assert trust["trusted"] == [0] and trust["frames"] == 85
    assert trust["per_class"][A] == {"confident": 30, "correct": 27, "precision": 0.9, "trusted": True}
    assert trust["per_class"][B]["precision"] == 0.5 and not trust["per_class"][B]["trusted"]
    assert trust["per_class"][C] == {"confident": 5, "correct": 5, "precision": 1.0, "trusted": False}  # too few
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        auto_label_trust(probs[:, :2], np.array(truth), [A, B, C], auto_threshold=0.9, min_precision=0.8, min_support=1)


def test_only_trusted_classes_become_auto_labels_and_the_others_may_go_to_people(tmp_path):
    frames = frames_table(12, truth=[None] * 12)
    top = [0] * 6 + [1] * 6
    probs = _probs(top, k=len(CLASSES))
    everything, _ = build_labels(frames, classes=CLASSES, auto_probs=probs, auto_threshold=0.9)
    gated, stats = build_labels(frames, classes=CLASSES, auto_probs=probs, auto_threshold=0.9, auto_classes=[0])
    assert everything.num_rows == 12 and gated.num_rows == 6 and set(gated.column("label").to_pylist()) == {0}
    assert stats["unlabeled"] == 6
    scores = type("Scores", (), {"probs": probs, "embeddings": np.random.default_rng(0).normal(size=(12, 4))})()
    engine = EngineSettings(auto_threshold=0.9, label_budget=12)
    store = LocalStore(tmp_path / "s")
    trusting = queue_batch(store, "b1", frames, scores, classes=CLASSES, engine=engine)
    gating = queue_batch(store, "b2", frames, scores, classes=CLASSES, engine=engine, auto_classes=[0])
    assert trusting["candidates"] == 0  # every frame would be auto-labeled
    assert gating["candidates"] == gating["queued"] == 6  # the six sure guesses of an untrusted class
    queued = {t["data"]["frame_id"] for t in store.read_json(gating["key"])}
    assert queued == {f for f, t in zip(frames.column("frame_id").to_pylist(), top, strict=True) if t == 1}
