"""The data engine: shadow-mode triggers, the champion's scores, selection within a budget."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from flywheel import layout, sim
from flywheel.config import EngineSettings, Settings
from flywheel.deployment import deploy
from flywheel.deployment.champion import Champion
from flywheel.engine import novelty
from flywheel.engine.select import confidence, select_for_labeling
from flywheel.engine.shadow import DailyUploadBudget, fleet_filter, shadow_filter
from flywheel.model_input import decode_images, frames_to_input
from flywheel.predict import predict
from flywheel.store import LocalStore
from tests.frames import CLASSES, SIZE, frames_table, onnx_session, tiny_model

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


# ---------------------------------------------------------------- selection


def _pool(n=400, c=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, c))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    emb = rng.normal(size=(n, d))
    cond = np.where(rng.random(n) < 0.04, "fog", "day").tolist()
    return probs, emb, {"condition": cond}


@pytest.mark.parametrize("strategy", ["uncertainty", "diversity", "balanced", "hybrid", "typical", "random"])
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


def test_typical_takes_the_core_of_each_cluster_not_its_outliers():
    """TypiClust: one pick per dense region, the frame nearest its region's centre; far-off frames
    (which k-center would take first) only once every dense region has one."""
    rng = np.random.default_rng(4)
    centers = np.eye(16)[:3] * 10
    sizes = [120, 60, 30]
    emb = np.concatenate([c + rng.normal(0, 1.0, (n, 16)) for c, n in zip(centers, sizes, strict=True)])
    cluster = np.repeat(np.arange(3), sizes)
    outliers = rng.normal(0, 1, (6, 16)) * 10  # scattered frames, each alone
    emb = np.concatenate([emb, outliers])
    probs = np.full((len(emb), 3), 1 / 3)
    idx = select_for_labeling(probs, emb, None, budget=3, strategy="typical", seed=0)
    assert sorted(cluster[idx].tolist()) == [0, 1, 2]  # no outlier, one per region
    for i in idx:  # each pick is among its region's most central frames
        members = np.flatnonzero(cluster == cluster[i])
        spread = np.linalg.norm(emb[members] / np.linalg.norm(emb[members], axis=1, keepdims=True)
                                - centers[cluster[i]] / 10, axis=1)  # fmt: skip
        assert (spread < spread[members == i]).mean() < 0.25
    far = select_for_labeling(probs, emb, None, budget=3, strategy="diversity")
    assert (far >= len(cluster)).any()  # the contrast: k-center reaches for the outliers
    again = select_for_labeling(probs, emb, None, budget=3, strategy="typical", seed=0)
    np.testing.assert_array_equal(idx, again)


# ---------------------------------------------------------------- novelty


def _clips(rng: np.random.Generator, centre: np.ndarray, clips: int, per_clip: int = 4) -> tuple[np.ndarray, list[str]]:
    """Embeddings of `clips` clips near `centre` (each clip's frames near-copies of each other), and clip ids."""
    z, ids = [], []
    for c in range(clips):
        base = centre + 0.1 * rng.standard_normal(len(centre))
        z.append(base + 0.02 * rng.standard_normal((per_clip, len(centre))))
        ids += [f"{centre.argmax()}-{c}"] * per_clip
    return np.concatenate(z), ids


def test_novelty_is_high_where_the_reference_is_sparse_and_calibrated_by_clip():
    rng = np.random.default_rng(0)
    e = np.eye(16)
    common, common_ids = _clips(rng, e[0], 45)
    rare, rare_ids = _clips(rng, e[1], 2)  # two clips: a rare condition in the training data
    ref = novelty.normalized(np.concatenate([common, rare]))
    threshold, n = novelty.calibrate(ref, np.array(common_ids + rare_ids), share=0.1)
    assert n == 47
    reference = novelty.NoveltyReference(embeddings=ref, threshold=threshold, share=0.1, clips=n, dataset_version=1)
    fresh_common = [reference.clip_novelty(_clips(rng, e[0], 1)[0]) for _ in range(20)]
    fresh_rare = [reference.clip_novelty(_clips(rng, e[1], 1)[0]) for _ in range(20)]
    unseen = [reference.clip_novelty(_clips(rng, e[2], 1)[0]) for _ in range(20)]
    assert np.mean(np.array(fresh_common) >= threshold) <= 0.25  # about `share` of clips like the common ones
    assert np.mean(fresh_rare) > np.mean(fresh_common) and min(unseen) > max(fresh_rare)  # sparse, then absent
    assert all(u >= threshold for u in unseen)
    # calibrated clip by clip: a clip's own near-copies do not make it look familiar
    ref_scores = novelty.knn_novelty(ref, ref, exclude=np.equal.outer(common_ids + rare_ids, common_ids + rare_ids))
    assert ref_scores[-8:].mean() > ref_scores[:-8].mean()
    with pytest.raises(ValueError, match="share"):
        novelty.calibrate(ref, np.array(common_ids + rare_ids), share=1.0)
    with pytest.raises(ValueError, match="2 clips"):
        novelty.calibrate(ref[:4], np.array(common_ids[:4]), share=0.1)


def test_shadow_mode_by_novelty_uploads_clips_unlike_the_training_data(flywheel_home, monkeypatch):
    """A champion trained on day clips only; the fleet then records day and night: `novel` clips are night."""
    from flywheel.cli import Ctx, run_iteration
    from flywheel.clips import read_clip

    monkeypatch.setenv("DAGSTER_HOME", str(flywheel_home / "dagster"))
    (flywheel_home / "dagster").mkdir()
    day = {"day": 1.0, "night": 0.0, "rain": 0.0, "fog": 0.0}
    obj = Ctx(None, {"sim.frames_per_clip": 4, "image_size": 32, "train.epochs": 3, "train.width": 8,
                     "train.depth": 1, "train.batch_size": 32, "dataset.golden_size": 0, "deploy.int8": False,
                     "dataset.split": {"train": 0.6, "val": 0.1, "test": 0.3}, "gate.floor": 0.0,
                     "gate.min_slice_frames": 1000, "gate.critical_slices": [], "tune.baseline_epochs": 0,
                     "sim.conditions_start": day, "sim.conditions_end": day})  # fmt: skip
    store = obj.store()
    sim.simulate(store, obj.settings, clips=30, seed=1)
    run_iteration(obj)  # v1, trained on day clips
    mixed = {"day": 0.5, "night": 0.5, "rain": 0.0, "fog": 0.0}
    later = obj.settings.model_copy(update={
        "sim": obj.settings.sim.model_copy(update={"conditions_start": mixed, "conditions_end": mixed}),
        "engine": EngineSettings(enabled=True, shadow_trigger="novelty", novelty_share=0.1),
    })  # fmt: skip
    before = {o.key for o in store.list(layout.LANDING)}
    upload = fleet_filter(store, later)
    sim.simulate(store, later, clips=24, seed=2, upload_filter=upload)
    uploaded = [read_clip(store.read_bytes(o.key), classes=CLASSES).meta for o in store.list(layout.LANDING)
                if o.key not in before]  # fmt: skip
    novel = [m.extra.get("condition") for m in uploaded if m.trigger == "novel"]
    assert len(novel) >= 5, [(m.trigger, m.condition) for m in uploaded]
    assert novel.count("night") / len(novel) >= 0.8  # the recorded stream is half night
    # with the confidence trigger the same champion flags clips by its own doubt, not by what it lacks
    assert fleet_filter(store, later.model_copy(update={"engine": EngineSettings(enabled=True)})) is not None
