"""Label quality: auto-label accuracy and label errors by confident learning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flywheel.labeling.quality import (
    auto_label_accuracy,
    blended_probs,
    cross_validated_probs,
    find_label_errors,
    label_errors,
)

# ---------------------------------------------------------------- label quality


def test_find_label_errors_finds_planted_flips():
    rng = np.random.default_rng(0)
    n, c = 600, 4
    true = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), true] += 4.0  # a decent out-of-sample model (about 93% accurate)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    planted = rng.choice(n, 30, replace=False)
    given[planted] = (true[planted] + rng.integers(1, c, 30)) % c
    fids = [f"f{i}" for i in range(n)]
    errors = find_label_errors(probs, given, frame_ids=fids)
    found = {int(e[0][1:]) for e in errors}
    hits = found & set(planted.tolist())
    # Mean self-confidence thresholds are conservative: a flip is found when the true class is
    # at least as sure as that class usually is, so recall stays below 100% by design.
    assert len(hits) >= 0.75 * len(planted)  # recall
    assert len(hits) >= 0.9 * len(found)  # precision
    for fid, g, s, score in errors:
        i = int(fid[1:])
        assert g == given[i] and s != g and 0 < score <= 1
        if i in hits:
            assert s == true[i]
    assert [e[3] for e in errors] == sorted((e[3] for e in errors), reverse=True)
    assert len(find_label_errors(probs, true, frame_ids=fids)) <= 0.02 * n  # clean labels: few false alarms


def test_cross_validated_probs_overrule_the_champions_own_confident_mistakes():
    """The champion confuses a whole kind of frame (class 0 looks like 1 to it); the batch's own labels, on
    its embeddings, know better: the blend flags the planted flips, not the champion's blind spot."""
    rng = np.random.default_rng(1)
    n, c = 800, 4
    true = rng.integers(0, c, n)
    centers = rng.normal(0, 1, (c, 16))
    emb = centers[true] + rng.normal(0, 0.35, (n, 16))  # the embeddings separate the classes
    logits = rng.normal(0, 0.5, (n, c))
    logits[np.arange(n), true] += 4.0
    blind = np.flatnonzero(true == 0)[: n // 10]  # the champion is confidently wrong here
    logits[blind, 1] += 8.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    planted = rng.choice(np.setdiff1d(np.arange(n), blind), 40, replace=False)
    given[planted] = (true[planted] + rng.integers(1, c, 40)) % c
    fids = [f"f{i}" for i in range(n)]

    def flagged(p, min_score=0.3):
        return {int(e[0][1:]) for e in find_label_errors(p, given, frame_ids=fids) if e[3] >= min_score}

    alone, blend = flagged(probs), flagged(blended_probs(probs, emb, given))
    assert len(alone & set(blind.tolist())) >= 0.5 * len(blind)  # the champion alone flags its own blind spot
    assert not blend & set(blind.tolist())
    hits = blend & set(planted.tolist())
    assert len(hits) >= 0.75 * len(planted) and len(hits) >= 0.9 * len(blend)
    cv = cross_validated_probs(emb, given, c)
    assert cv.shape == (n, c) and np.allclose(cv.sum(1), 1.0)
    # too few labels to cross-validate: no evidence against any label, not an error
    tiny = cross_validated_probs(emb[:3], given[:3], c)
    assert np.array_equal(tiny.argmax(1), given[:3])


def test_auto_label_accuracy_compares_only_where_a_reference_exists():
    labels = pa.table({"frame_id": ["a", "b", "c", "d"], "label": pa.array([1, 2, 1, 0], pa.int32()),
                       "label_source": ["auto", "auto", "human", "auto"],
                       "label_confidence": pa.array([0.9, 0.95, 1.0, 0.99], pa.float32())})  # fmt: skip
    out = auto_label_accuracy(labels, {"a": 1, "b": 0, "c": 1})
    assert out["compared"] == 2 and out["correct"] == 1 and out["accuracy"] == 0.5
    assert out["per_class"][1]["precision"] == 1.0 and out["per_class"][2]["precision"] == 0.0
    assert auto_label_accuracy(labels, {})["accuracy"] is None


def test_label_errors_check_human_labels_only_and_name_the_classes():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.1, 0.9], [0.05, 0.95], [0.97, 0.03]], np.float32)
    fids = ["a", "b", "c", "d", "e"]
    labels = pa.table({"frame_id": ["e", "a", "b", "c", "d"], "label": pa.array([1, 0, 0, 1, 0], pa.int32()),
                       "label_source": ["auto", "human", "ground_truth", "human", "human"],
                       "label_confidence": pa.array([0.97, 1, 1, 1, 1], pa.float32())})  # fmt: skip
    out = label_errors(probs, fids, labels, ["road", "car"])
    assert out["checked"] == 4  # the auto label of "e" is the champion's own guess: not checked
    assert [(e["frame_id"], e["given"], e["suggested"]) for e in out["errors"]] == [("d", "road", "car")]
    assert out["errors"][0]["score"] == pytest.approx(0.9)
    # a flag counts only when the champion prefers the other class by at least min_score
    assert label_errors(probs, fids, labels, ["road", "car"], min_score=0.95)["flagged"] == 0
    assert label_errors(probs, fids, labels, ["road", "car"], min_score=0.85)["flagged"] == 1
