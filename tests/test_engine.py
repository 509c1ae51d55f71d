"""The data engine: shadow-mode triggers, Label Studio queue round trip, the ground-truth wall,
selection within a budget, label quality."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from flywheel import deploy, layout, sim
from flywheel.champion import Champion
from flywheel.config import EngineSettings, Settings
from flywheel.engine.quality import (
    auto_label_accuracy,
    blended_probs,
    cross_validated_probs,
    find_label_errors,
    label_errors,
)
from flywheel.engine.queue import queue_batch, read_exports, read_queue, write_queue
from flywheel.engine.select import confidence, select_for_labeling
from flywheel.engine.shadow import DailyUploadBudget, fleet_filter, shadow_filter
from flywheel.labels import build_labels, hide_ground_truth
from flywheel.labelstudio import human_labels, label_config
from flywheel.model import ModelConfig, build_model
from flywheel.model_input import decode_images, frames_to_input
from flywheel.predict import predict
from flywheel.schema import FRAMES
from flywheel.sim.annotator import answer_queue
from flywheel.store import LocalStore

CLASSES = ["clear_road", "vehicle", "pedestrian", "cyclist", "red_light", "obstacle"]
SIZE = 16


def tiny_model(*, seed: int = 0, head_scale: float = 1.0, bias: list[float] | None = None):
    """A width-4 FrameClassifier; head_scale spreads the confidences, `bias` with a zero head fixes them."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(num_classes=len(CLASSES), image_size=SIZE, width=4, depth=1)).eval()
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
        if bias is not None:
            model.head.weight.zero_()
            model.head.bias.copy_(torch.tensor(bias))
    return model


def onnx_session(model):
    return deploy.session(deploy.export_onnx(model, image_size=SIZE))


def frames_table(n: int, *, truth: str | list[str] = "clear_road", batch: str = "b1", conditions=None) -> pa.Table:
    rng = np.random.default_rng(n)
    rows = []
    for i in range(n):
        img = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        rows.append({
            "frame_id": f"c{i // 4}/front/{i % 4}", "clip_id": f"c{i // 4}", "vehicle_id": "v1", "trigger": "random",
            "recorded_at": "2026-01-01T00:00:00Z", "condition": (conditions or ["day"] * n)[i], "camera": "front",
            "timestamp_ns": i, "image": cv2.imencode(".jpg", img)[1].tobytes(), "format": "jpeg", "height": 12,
            "width": 16, "ground_truth": truth if isinstance(truth, str) else truth[i], "batch_id": batch,
            "clip_key": f"landing/v1/d/c{i // 4}.mcap",
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=FRAMES)


# ---------------------------------------------------------------- shadow mode


def test_confidence_measures_order_sure_above_unsure():
    sure, unsure = [0.97, 0.01, 0.01, 0.01], [0.4, 0.35, 0.15, 0.1]
    for measure in ("max_softmax", "margin", "entropy"):
        c = confidence(np.array([sure, unsure]), measure)
        assert 0 <= c[1] < c[0] <= 1, measure
    assert confidence(np.full((1, 4), 0.25), "entropy")[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="measure"):
        confidence(np.array([sure]), "vibes")


def test_shadow_filter_flags_a_clip_when_any_frame_is_unsure():
    model = tiny_model(head_scale=40.0)
    session = onnx_session(model)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (24, 30, 40, 3), dtype=np.uint8)
    frames[:8] //= 4  # darker frames: a different confidence spread
    conf = confidence(predict(session, frames_to_input(frames, SIZE)).probs, "max_softmax")
    assert conf.max() - conf.min() > 0.05  # the stub model really is more and less sure
    threshold = float(np.median(conf))
    sure, unsure = frames[conf >= threshold], frames[conf < threshold]
    f = shadow_filter(session, {"image_size": SIZE}, threshold=threshold)
    assert f(sure, {"recorded_at": "2025-01-06T10:00:00"}) is None
    mixed = np.concatenate([sure[:3], unsure[:1], sure[3:5]])
    assert f(mixed, {"recorded_at": "2025-01-06T10:00:00"}) == "low_confidence"


@pytest.mark.parametrize("measure", ["max_softmax", "margin", "entropy"])
def test_shadow_filter_constant_models(measure):
    frames = np.random.default_rng(1).integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    meta = {"recorded_at": "2025-01-06T10:00:00"}
    uniform = shadow_filter(onnx_session(tiny_model(bias=[0.0] * 6)), {"image_size": SIZE}, threshold=0.5,
                            measure=measure)  # fmt: skip
    certain = shadow_filter(onnx_session(tiny_model(bias=[12.0, 0, 0, 0, 0, 0])), {"image_size": SIZE},
                            threshold=0.5, measure=measure)  # fmt: skip
    assert uniform(frames, meta) == "low_confidence"
    assert certain(frames, meta) is None


def test_daily_budget_caps_flags_per_simulated_day():
    session = onnx_session(tiny_model(bias=[0.0] * 6))  # always unsure
    f = shadow_filter(session, {"image_size": SIZE}, threshold=0.9, budget=DailyUploadBudget(2))
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    day1 = [f(frames, {"recorded_at": f"2025-01-06T{h:02d}:00:00"}) for h in range(8, 12)]
    day2 = [f(frames, {"recorded_at": "2025-01-07T08:00:00"})]
    assert day1 == ["low_confidence", "low_confidence", None, None] and day2 == ["low_confidence"]


def test_simulator_uploads_flagged_clips_as_low_confidence(tmp_path):
    settings = Settings.model_validate({"sim": {"width": 32, "height": 24, "frames_per_clip": 3, "vehicles": 2},
                                        "engine": {"enabled": True, "shadow_threshold": 0.5}})  # fmt: skip
    store = LocalStore(tmp_path / "s")
    assert fleet_filter(store, settings) is None  # nothing deployed: random uploads only
    data = deploy.export_onnx(tiny_model(bias=[0.0] * 6), image_size=SIZE)
    deploy.deploy(store, model_name="perception", version="v1", onnx_bytes=data, classes=CLASSES, image_size=SIZE,
                  metrics={}, dataset={"name": "d", "version": 1, "manifest_sha256": "0" * 64}, mlflow_version="1",
                  gate={"passed": True})  # fmt: skip
    assert fleet_filter(store, settings.model_copy(update={"engine": EngineSettings()})) is None  # engine off
    f = fleet_filter(store, settings)
    sim.simulate(store, settings, clips=6, seed=0, upload_filter=f)
    state = sim.read_state(store)
    assert state["recorded"] == 6  # every clip is unsure: nothing is skipped
    from flywheel.clips import read_clip

    triggers = {read_clip(store.read_bytes(o.key), classes=CLASSES).meta.trigger for o in store.list(layout.LANDING)}
    assert triggers <= {"low_confidence", "hard_brake"} and "low_confidence" in triggers


# ---------------------------------------------------------------- queue and annotator


def test_queue_tasks_are_label_studio_imports_with_reachable_images(tmp_path):
    store = LocalStore(tmp_path / "s")
    frames = frames_table(8)
    ids = ["c0/front/1", "c1/front/2"]
    key = write_queue(store, "b1", frames, ids, [("vehicle", 0.4), ("cyclist", 0.3)], model_version="v3")
    assert key == "labeling/queue/b1.json"
    tasks = store.read_json(key)
    assert [t["data"]["frame_id"] for t in tasks] == ids
    for t, (cls, score) in zip(tasks, [("vehicle", 0.4), ("cyclist", 0.3)], strict=True):
        (pred,) = t["predictions"]
        assert pred["model_version"] == "v3" and pred["score"] == pytest.approx(score)
        assert pred["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                   "value": {"choices": [cls]}}]  # fmt: skip
    image_bytes = dict(zip(frames.column("frame_id").to_pylist(), frames.column("image").to_pylist(), strict=True))
    for t in tasks:
        local = tasks and t["data"]["image"]
        assert local == store.uri(f"labeling/images/b1/{t['data']['frame_id']}.jpg")
        assert store.read_bytes(f"labeling/images/b1/{t['data']['frame_id']}.jpg") == image_bytes[t["data"]["frame_id"]]
    # a URL prefix for a web server / Label Studio local-files; or the image inline
    write_queue(store, "b2", frames, ids[:1], image_url_prefix="/data/local-files/?d=fw/")
    assert store.read_json("labeling/queue/b2.json")[0]["data"]["image"] == "/data/local-files/?d=fw/labeling/images/b2/c0/front/1.jpg"
    write_queue(store, "b3", frames, ids[:1], inline_images=True)
    uri = store.read_json("labeling/queue/b3.json")[0]["data"]["image"]
    assert uri.startswith("data:image/jpeg;base64,") and base64.b64decode(uri.split(",", 1)[1]) == image_bytes[ids[0]]
    assert '<Choices name="label" toName="image"' in label_config(CLASSES) and 'value="$image"' in label_config(CLASSES)


def test_queue_rejects_frames_not_in_the_batch(tmp_path):
    with pytest.raises(ValueError, match="not in batch b1"):
        write_queue(LocalStore(tmp_path), "b1", frames_table(4), ["nope/front/0"])


def _batch_in_store(store, frames: pa.Table, batch_id: str = "b1") -> pa.Table:
    store.write_parquet(layout.frames_key(batch_id), frames)  # where the annotator looks the truth up
    return frames


def test_annotator_round_trips_through_label_studio_files(tmp_path):
    store = LocalStore(tmp_path / "s")
    truth = [CLASSES[i % 6] for i in range(8)]
    frames = _batch_in_store(store, frames_table(8, truth=truth))
    write_queue(store, "b1", frames, ["c0/front/0", "c0/front/1", "c1/front/3"])
    out = answer_queue(store, classes=CLASSES)
    assert out["answered_batches"] == ["b1"] and out["answered"] == 3  # only what the queue sent
    got = human_labels(read_exports(store), CLASSES)  # the labels stage's own parser
    assert got == {"c0/front/0": 0, "c0/front/1": 1, "c1/front/3": 7 % 6}
    again = answer_queue(store, classes=CLASSES)
    assert again["answered_batches"] == []  # a batch is answered once


def test_annotator_lags_and_errs_as_configured(tmp_path):
    store = LocalStore(tmp_path / "s")
    frames = frames_table(8)
    for batch, ids in (("b1", slice(0, 4)), ("b2", slice(4, 8))):
        _batch_in_store(store, frames, batch)
        write_queue(store, batch, frames, frames.column("frame_id").to_pylist()[ids])
    out = answer_queue(store, classes=CLASSES, error_rate=1.0, delay_batches=1)
    assert out["answered_batches"] == ["b1"] and out["waiting"] == ["b2"]
    assert out["flipped"] == 4
    assert all(c != 0 for c in human_labels(read_exports(store), CLASSES).values())  # all wrong
    _batch_in_store(store, frames_table(8, truth=[None] * 8), "b2")
    with pytest.raises(ValueError, match="has no ground truth"):
        answer_queue(store, classes=CLASSES)


# ---------------------------------------------------------------- the ground-truth wall


def test_ground_truth_never_reaches_training_labels_when_the_engine_is_on(tmp_path):
    """Every clip says "clear_road"; the champion says "vehicle". Only queued frames may come out
    clear_road (from the annotator); auto-labels are the model's; the rest stays unlabeled."""
    store = LocalStore(tmp_path / "s")
    frames = _batch_in_store(store, frames_table(12, truth="clear_road"))
    champion = Champion(onnx_session(tiny_model(bias=[0, 9.0, 0, 0, 0, 0])), {"image_size": SIZE, "version": "v1"})
    queued = ["c0/front/0", "c2/front/3"]
    write_queue(store, "b1", frames, queued)
    answer_queue(store, classes=CLASSES)

    def engine_labels(champ):  # what the labels stage does with the engine on
        return build_labels(hide_ground_truth(frames), classes=CLASSES, human_exports=read_exports(store),
                            auto_probs=champ.score(frames).probs, auto_threshold=0.9)  # fmt: skip

    labels, stats = engine_labels(champion)
    by_frame = {r["frame_id"]: r for r in labels.to_pylist()}
    assert stats["ground_truth"] == 0 and "ground_truth" not in {r["label_source"] for r in by_frame.values()}
    for fid, row in by_frame.items():
        if fid in queued:
            assert (row["label_source"], row["label"]) == ("human", 0)
        else:
            assert (row["label_source"], row["label"]) == ("auto", 1)  # the model's guess, not the truth
    # Unsure champion: no auto-labels, and the unqueued frames stay unlabeled.
    labels, stats = engine_labels(Champion(onnx_session(tiny_model(bias=[0.0] * 6)), {"image_size": SIZE}))
    assert sorted(labels.column("frame_id").to_pylist()) == sorted(queued) and stats["unlabeled"] == 10


def test_hide_ground_truth_nulls_the_column_only():
    frames = frames_table(4)
    hidden = hide_ground_truth(frames)
    assert hidden.column("ground_truth").null_count == 4 and hidden.schema == frames.schema
    assert hidden.drop(["ground_truth"]).equals(frames.drop(["ground_truth"]))


def test_champion_scores_match_the_torch_model():
    model = tiny_model(head_scale=20.0)
    frames = frames_table(6)
    scores = Champion(onnx_session(model), {"image_size": SIZE}).score(frames)
    torch_scores = predict(model, decode_images(frames.column("image").to_pylist(), SIZE), embeddings=True)
    np.testing.assert_array_equal(scores.probs.argmax(1), torch_scores.probs.argmax(1))
    np.testing.assert_allclose(scores.probs, torch_scores.probs, atol=1e-4)
    np.testing.assert_allclose(scores.embeddings, torch_scores.embeddings, atol=1e-4)


def test_predict_torch_and_onnx_with_an_embedding_output():
    model = tiny_model(head_scale=5.0)
    images = np.random.default_rng(2).integers(0, 256, (5, 3, SIZE, SIZE), dtype=np.uint8)
    out = predict(model, images, embeddings=True)
    hidden = model.cfg.hidden + 4 * model.cfg.width  # the default head: spatial features beside coord-pooled ones
    assert out.probs.shape == (5, 6) and out.embeddings.shape == (5, hidden)
    logits_only = io.BytesIO()  # a graph from elsewhere, without the embedding output
    torch.onnx.export(model, (torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8),), logits_only, dynamo=False,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})  # fmt: skip
    with pytest.raises(ValueError, match="no 'embedding'"):
        predict(deploy.session(logits_only.getvalue()), images, embeddings=True)
    np.testing.assert_allclose(predict(deploy.session(logits_only.getvalue()), images).probs, out.probs, atol=1e-4)
    onnx_out = predict(deploy.session(deploy.export_onnx(model, image_size=SIZE)), images, embeddings=True)
    np.testing.assert_allclose(onnx_out.probs, out.probs, atol=1e-4)
    np.testing.assert_allclose(onnx_out.embeddings, out.embeddings, atol=1e-4)
    assert predict(model, images, embeddings=False).embeddings is None


def test_queue_batch_sends_only_unsure_frames_within_budget(tmp_path):
    store = LocalStore(tmp_path / "s")
    frames = frames_table(16)
    scores = predict(tiny_model(head_scale=20.0), decode_images(frames.column("image").to_pylist(), SIZE),
                     embeddings=True)  # fmt: skip
    out = queue_batch(store, "b1", frames, scores, classes=CLASSES,
                      engine=EngineSettings(auto_threshold=1.0, label_budget=5), model_version="v1")  # fmt: skip
    tasks = store.read_json(out["key"])
    assert out["queued"] == len(tasks) == 5 and all(t["predictions"][0]["model_version"] == "v1" for t in tasks)
    again = queue_batch(store, "b1", frames, scores, classes=CLASSES, engine=EngineSettings(label_budget=9))
    assert again["queued"] == 5 and store.read_json(out["key"]) == tasks  # a batch is queued once
    sure = queue_batch(store, "b2", frames, scores, classes=CLASSES,
                       engine=EngineSettings(auto_threshold=0.0, label_budget=5))  # fmt: skip
    assert sure["queued"] == 0 and store.read_json(sure["key"]) == []
    # auto labels off: the champion labels nothing, so every frame is a candidate for people
    manual = queue_batch(store, "b4", frames, scores, classes=CLASSES,
                         engine=EngineSettings(auto_threshold=0.0, auto_labels=False, label_budget=5))  # fmt: skip
    assert manual["queued"] == 5 and manual["candidates"] == 16
    cold = queue_batch(store, "b3", frames, None, classes=CLASSES, engine=EngineSettings(label_budget=7))
    assert cold["queued"] == 7 and [q["batch_id"] for q in read_queue(store)] == ["b1", "b2", "b4", "b3"]


def test_same_uploads_get_the_same_random_picks_and_answers_in_every_run(tmp_path):
    # a batch id carries its upload time, so two runs of one fleet name a batch apart: the cold-start sample
    # and the simulated team's errors must follow the frames, not the name
    frames = frames_table(40)
    picks, answers = [], []
    for run, batch in (("r1", "20260101T000000-aa"), ("r2", "20261231T235959-bb")):
        store = LocalStore(tmp_path / run)
        _batch_in_store(store, frames, batch)
        queue_batch(store, batch, frames.take(np.arange(40)[::-1]), None, classes=CLASSES,
                    engine=EngineSettings(label_budget=10))  # fmt: skip
        picks.append(sorted(t["data"]["frame_id"] for t in store.read_json(layout.queue_key(batch))))
        answer_queue(store, classes=CLASSES, error_rate=0.5)
        answers.append(human_labels(read_exports(store), CLASSES))
    assert len(picks[0]) == 10 and picks[0] == picks[1]
    assert answers[0] == answers[1] and 0 < sum(c != 0 for c in answers[0].values()) < 10  # some flipped, alike
    other = queue_batch(LocalStore(tmp_path / "r3"), "b", frames, None, classes=CLASSES,
                        engine=EngineSettings(label_budget=10, seed=1))  # fmt: skip
    assert other["queued"] == 10 and sorted(
        t["data"]["frame_id"] for t in LocalStore(tmp_path / "r3").read_json(other["key"])) != picks[0]


# ---------------------------------------------------------------- selection


def _pool(n=400, c=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, c))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    emb = rng.normal(size=(n, d))
    cond = np.where(rng.random(n) < 0.04, "fog", "day").tolist()
    return probs, emb, {"condition": cond}


@pytest.mark.parametrize("strategy", ["uncertainty", "diversity", "balanced", "hybrid", "random"])
@pytest.mark.parametrize("budget", [0, 1, 30, 1000])
def test_selection_respects_the_budget(strategy, budget):
    probs, emb, meta = _pool()
    idx = select_for_labeling(probs, emb, meta, budget=budget, strategy=strategy, seed=1)
    assert len(idx) == min(budget, len(probs)) == len(set(idx.tolist()))
    assert idx.min(initial=0) >= 0 and idx.max(initial=0) < len(probs)


def test_uncertainty_takes_the_least_sure():
    probs, emb, meta = _pool()
    idx = select_for_labeling(probs, emb, meta, budget=10, strategy="uncertainty")
    ent = -(probs * np.log(probs)).sum(1)
    assert set(idx.tolist()) == set(np.argsort(-ent)[:10].tolist())


def test_balanced_and_hybrid_cover_the_rare_condition():
    probs, emb, meta = _pool()
    n_fog = meta["condition"].count("fog")
    assert 5 <= n_fog <= 30
    share = n_fog / len(probs)
    for strategy in ("balanced", "hybrid"):
        idx = select_for_labeling(probs, emb, meta, budget=40, strategy=strategy, seed=0)
        fog = sum(meta["condition"][i] == "fog" for i in idx)
        assert fog / 40 > 2 * share, strategy  # over-represented vs the pool
    # every (predicted class x condition) group with frames gets a pick before any gets a second
    groups = {(int(probs[i].argmax()), meta["condition"][i]) for i in range(len(probs))}
    idx = select_for_labeling(probs, emb, meta, budget=len(groups), strategy="balanced")
    assert {(int(probs[i].argmax()), meta["condition"][i]) for i in idx} == groups


def test_diversity_covers_every_cluster():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(5, 16)) * 10
    emb = np.repeat(centers, [100, 50, 20, 5, 2], axis=0) + rng.normal(0, 0.05, (177, 16))
    cluster = np.repeat(np.arange(5), [100, 50, 20, 5, 2])
    probs = np.full((177, 3), 1 / 3)
    idx = select_for_labeling(probs, emb, None, budget=5, strategy="diversity")
    assert sorted(cluster[idx].tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="needs embeddings"):
        select_for_labeling(probs, None, None, budget=5, strategy="hybrid")


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


def test_a_batch_export_answers_only_the_frames_its_queue_sent(tmp_path):
    """An export for batch b1 that also labels a frame b1 never queued (another batch's, say) does
    not reach that frame: only the queued frames take its answers, and the rest are named."""
    store = LocalStore(tmp_path / "s")
    frames = _batch_in_store(store, frames_table(8, truth=[CLASSES[i % 6] for i in range(8)]))
    write_queue(store, "b1", frames, ["c0/front/0"])
    queued = store.read_json(layout.queue_key("b1"))
    stray = {**queued[0], "data": {**queued[0]["data"], "frame_id": "c1/front/3"}}
    answer = {"id": 1, "result": [{"type": "choices", "value": {"choices": [CLASSES[2]]}, "from_name": "label",
                                   "to_name": "image"}], "created_at": "2026-11-01T10:00:00Z"}  # fmt: skip
    store.write_json(layout.done_key("b1"), [{**t, "annotations": [answer]} for t in (queued[0], stray)])
    exports = read_exports(store)
    assert exports[0]["not_queued"] == ["c1/front/3"]
    assert human_labels(exports, CLASSES) == {"c0/front/0": 2}
