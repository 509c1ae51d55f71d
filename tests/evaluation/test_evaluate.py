import os
import re

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pytest
import torch

from flywheel.evaluation import evaluate as ev
from flywheel.model import ModelConfig, build_model
from flywheel.predict import predict

CLASSES = ["a", "b", "c"]


def one_hot_probs(preds, num_classes=3, conf=0.9):
    """Probabilities whose argmax is `preds`, with max confidence `conf`."""
    p = np.full((len(preds), num_classes), (1 - conf) / (num_classes - 1), dtype=np.float32)
    p[np.arange(len(preds)), preds] = conf
    return p


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, image_size=16, width=4, depth=1)).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 3, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 3, 24)
    return model, images, labels


# --- metrics on hand-computed cases ---------------------------------------------------------


def test_accuracy_confusion_and_per_class():
    labels = np.array([0, 0, 1, 1])
    r = ev.score(one_hot_probs([0, 1, 1, 1]), labels, classes=CLASSES)
    assert r["accuracy"] == 0.75
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert r["per_class"]["a"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert r["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["n"] == 4 and r["classes"] == CLASSES


def test_macro_f1_leaves_out_a_class_absent_from_labels_and_predictions():
    # class c occurs nowhere: the mean is over a and b only
    r = ev.score(one_hot_probs([0, 1, 1, 1]), np.array([0, 0, 1, 1]), classes=CLASSES)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_macro_f1_counts_a_class_that_is_only_predicted_as_zero():
    # c is predicted once but never true: F1(c) = 0 and it is in the mean
    r = ev.score(one_hot_probs([0, 2, 1, 1]), np.array([0, 0, 1, 1]), classes=CLASSES)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.65, 0.35]], dtype=np.float32)
    labels = np.array([0, 1, 1, 0])
    # bin of 0.95: accuracy 1/2, confidence 0.95 -> 0.45 * 2/4; bin of 0.65: 1.0 vs 0.65 -> 0.35 * 2/4
    assert ev.expected_calibration_error(probs, labels) == pytest.approx(0.4, abs=1e-6)
    r = ev.score(probs, labels, classes=["x", "y"])
    assert r["ece"] == pytest.approx(0.4, abs=1e-6)


def test_ece_is_zero_when_confidence_matches_accuracy():
    # 10 frames at confidence 0.8, 8 of them right
    probs = one_hot_probs([0] * 10, num_classes=2, conf=0.8)
    labels = np.array([0] * 8 + [1] * 2)
    assert ev.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)


def test_slices_score_each_value_and_flag_small_ones():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = [0, 0, 1, 0, 2, 1]
    slices = {"condition": ["fog", "fog", "fog", "day", "day", "day"], "camera": ["front"] * 6}
    r = ev.score(one_hot_probs(preds), labels, classes=CLASSES, slices=slices, min_slice_frames=4)
    fog, day, front = (
        r["per_slice"]["condition=fog"],
        r["per_slice"]["condition=day"],
        r["per_slice"]["camera=front"],
    )
    assert fog == {"accuracy": 1.0, "macro_f1": 1.0, "n": 3, "small": True}
    assert day["accuracy"] == pytest.approx(1 / 3) and day["n"] == 3
    # day: labels [1, 2, 2], preds [0, 2, 1] -> F1 a=0 (predicted only), b=0, c=2/3
    assert day["macro_f1"] == pytest.approx((0 + 0 + 2 / 3) / 3)
    assert front["n"] == 6 and front["small"] is False and front["accuracy"] == r["accuracy"]


@pytest.mark.parametrize(
    "probs, labels, slices, match",
    [
        (one_hot_probs([0, 1]), np.array([0, 3]), None, "labels must lie"),
        (one_hot_probs([0, 1]), np.array([0.0, 1.0]), None, "integer"),
        (one_hot_probs([0, 1]), np.array([0]), None, "labels must have shape"),
        (one_hot_probs([0, 1], num_classes=2), np.array([0, 1]), None, "3 classes"),
        (one_hot_probs([0, 1]), np.array([0, 1]), {"camera": ["front"]}, "slice column 'camera'"),
        (np.zeros((0, 3), np.float32), np.array([], dtype=np.int64), None, "no frames"),
    ],
)
def test_score_rejects_bad_input(probs, labels, slices, match):
    with pytest.raises(ValueError, match=match):
        ev.score(probs, labels, classes=CLASSES, slices=slices)


# --- predictions and robustness -------------------------------------------------------------


@pytest.mark.parametrize("name", ev.CORRUPTIONS)
def test_corrupt_changes_images_and_is_seeded(tiny, name):
    _, images, _ = tiny
    a = ev.corrupt(images[:4], name, seed=3)
    assert a.shape == images[:4].shape and a.dtype == np.uint8
    assert not np.array_equal(a, images[:4])
    np.testing.assert_array_equal(a, ev.corrupt(images[:4], name, seed=3))


def test_unknown_corruption_is_named():
    with pytest.raises(ValueError, match="'snow'"):
        ev.corruption("snow", 0)


def test_robustness_runs_every_corruption_and_subsamples_fog(tiny, monkeypatch):
    model, images, labels = tiny
    monkeypatch.setitem(ev.SLOW_CORRUPTIONS, "fog", 10)
    r = ev.robustness(model, images, labels, seed=1)
    assert list(r) == list(ev.CORRUPTIONS)
    for name, s in r.items():
        assert 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s["macro_f1"] <= 1.0
        assert s["n"] == (10 if name == "fog" else 24)
        assert s["subsampled"] is (name == "fog")
    capped = ev.robustness(model, images, labels, seed=1, max_frames=6)
    assert [s["n"] for s in capped.values()] == [6, 6, 6, 6]
    assert all(s["subsampled"] for s in capped.values())
    clean = ev.score(predict(model, images).probs, labels, classes=CLASSES)
    assert r["gauss_noise"]["clean_accuracy"] == pytest.approx(clean["accuracy"])
    assert r == ev.robustness(model, images, labels, seed=1)


# --- one evaluation, reporting --------------------------------------------------------------


def test_evaluate_model_reports_overall_golden_and_test(tiny):
    model, images, labels = tiny
    golden = np.arange(24) >= 16
    meta = {"trigger": ["random"] * 12 + ["hard_brake"] * 12, "camera": ["front"] * 24}
    r = ev.evaluate_model(model, images, labels, meta, classes=CLASSES, golden_mask=golden,
                          min_slice_frames=10, corruptions=("gauss_noise",))  # fmt: skip
    assert r["n"] == 24 and r["golden"]["n"] == 8 and r["test"]["n"] == 16
    assert r["per_slice"]["set=golden"]["n"] == 8 and r["per_slice"]["set=golden"]["small"]
    assert r["per_slice"]["set=golden"]["accuracy"] == r["golden"]["accuracy"]
    assert r["test"]["per_slice"]["trigger=hard_brake"]["n"] == 4
    assert list(r["robustness"]) == ["gauss_noise"]
    probs = predict(model, images).probs
    again = ev.evaluate_model(model, images, labels, meta, classes=CLASSES, golden_mask=golden,
                              min_slice_frames=10, corruptions=("gauss_noise",), probs=probs)  # fmt: skip
    assert again == r


def test_an_evaluation_with_progress_bars_gives_the_same_report(tiny, capsys):
    model, images, labels = tiny
    meta = {"camera": ["front"] * 24}
    kw = {"classes": CLASSES, "min_slice_frames": 10, "corruptions": ("gauss_noise", "rain")}
    quiet = ev.evaluate_model(model, images, labels, meta, **kw)
    assert capsys.readouterr().err == ""  # off unless asked: the Dagster assets stay quiet
    assert ev.evaluate_model(model, images, labels, meta, **kw, progress=True) == quiet
    err = capsys.readouterr().err
    assert "predict" in err and "robustness" in err


def test_evaluate_model_rejects_a_bad_golden_mask(tiny):
    model, images, labels = tiny
    with pytest.raises(ValueError, match="golden_mask"):
        ev.evaluate_model(model, images, labels, {}, classes=CLASSES, golden_mask=np.ones(3, bool),
                          corruptions=())  # fmt: skip


def test_flat_metrics_names_are_mlflow_safe():
    r = ev.score(one_hot_probs([0, 1]), np.array([0, 1]), classes=CLASSES,
                 slices={"vehicle": ["car=1", "car#2"]})  # fmt: skip
    flat = ev.flat_metrics(r)
    assert flat["accuracy"] == 1.0 and "slice/vehicle/car_1/accuracy" in flat
    assert all(re.fullmatch(r"[/\w.\- :]+", k) for k in flat)


def test_compare_rows_and_deltas():
    labels = np.array([0, 0, 1, 1])
    ch = ev.score(one_hot_probs([0, 0, 1, 1]), labels, classes=CLASSES)
    cp = ev.score(one_hot_probs([0, 1, 1, 1]), labels, classes=CLASSES)
    rows = {r["metric"]: r for r in ev.compare(ch, cp)}
    assert rows["accuracy"] == {
        "metric": "accuracy",
        "challenger": 1.0,
        "champion": 0.75,
        "delta": 0.25,
    }
    first = ev.compare(ch, None)
    assert all(r["champion"] is None and r["delta"] is None for r in first)
    md = ev.compare_markdown(ev.compare(ch, cp))
    assert "| accuracy | 1.0000 | 0.7500 | +0.2500 |" in md


# --- plots (flywheel/plots.py renders evaluation results) ------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(data: bytes) -> np.ndarray:
    import cv2

    assert data[:8] == PNG_SIGNATURE
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.ndim == 3 and min(img.shape[:2]) > 100
    return img


def test_plots_are_decodable_pngs():
    from flywheel import plots

    probs = one_hot_probs([0, 1, 2, 2, 1], conf=0.7)
    labels = np.array([0, 1, 2, 0, 0])
    r = ev.score(probs, labels, classes=CLASSES)
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 10,
                "lr": 0.1, "note": "text is skipped"} for e in (1, 2, 3)]  # fmt: skip
    rows = [{"iteration": i, "macro_f1": 0.5 + i / 20, "accuracy": 0.6 + i / 20} for i in range(4)]
    rows[2].pop("accuracy")  # a gap, not a zero
    for png in (
        plots.confusion_png(r["confusion"], CLASSES),
        plots.learning_curves_png(history),
        plots.reliability_png(probs, labels),
    ):
        decode_png(png)
    md = plots.markdown_image(plots.reliability_png(probs, labels), "calibration")
    assert md.startswith("![calibration](data:image/png;base64,iVBORw0KGgo")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: p.confusion_png([[1, 0], [0, 1]], CLASSES), r"expected \(3, 3\)"),
        (lambda p: p.learning_curves_png([]), "history is empty"),
        (lambda p: p.demo_png([]), "rows is empty"),
        (lambda p: p.reliability_png(np.zeros((2, 3)), np.zeros(3, int)), "labels"),
    ],
)
def test_plots_reject_bad_input(call, match):
    from flywheel import plots

    with pytest.raises(ValueError, match=match):
        call(plots)


def _iteration(i, *, champion, rare_frames, delta=None, gated=None, passed=True, fixed=None):
    """One `report.iteration_summary` row of the demo; `fixed`: the deployed model on the fixed set."""
    return {"iteration": i, "metric": "macro_f1", "rare_slice": "condition=fog", "challenger": 0.5 + 0.1 * i,
            "champion": champion, "gate_passed": passed, "challenger_rare": 0.4, "rare_frames": rare_frames,
            "rare_delta": delta, "rare_gated": gated, "min_slice_frames": 30, "slice_tolerance": 0.05,
            "fixed_frames": None if fixed is None else 150, "fixed_deployed": fixed}  # fmt: skip


def test_demo_plot_has_whole_iterations_sample_sizes_and_the_gates_intervals():
    from flywheel import plots

    rows = [_iteration(1, champion=None, rare_frames=4),  # no fixed set yet
            _iteration(2, champion=0.6, rare_frames=12, delta=[0.1, -0.3, 0.5], gated=False, fixed=0.65),
            _iteration(3, champion=0.7, rare_frames=80, delta=[-0.02, -0.08, 0.04], gated=True, passed=False, fixed=0.65)]  # fmt: skip
    fig = plots.demo_figure(rows)
    top, bottom = fig.axes
    assert list(bottom.get_xticks()) == [1, 2, 3]  # no 1.5, 2.5
    labels = [t.get_text() for t in top.texts]
    assert labels == ["n=4", "n=12", "n=80"]  # each slice point with its frames
    lines = {ln.get_label(): ln for ln in top.get_lines()}
    growing = ["challenger macro_f1, growing evaluation set", "champion macro_f1, growing evaluation set",
               "deployed macro_f1, growing evaluation set"]  # fmt: skip
    assert set(growing) <= set(lines)
    hollow = lines["challenger on condition=fog (< 30 frames: too few to judge)"]
    assert list(hollow.get_xdata()) == [1, 2] and hollow.get_markerfacecolor() == "none"
    # the deployed model: the challenger where the gate passed, else the champion kept
    assert list(lines["deployed macro_f1, growing evaluation set"].get_ydata()) == pytest.approx([0.6, 0.7, 0.7])
    # beside it, the deployed model on the fixed held-out set, with its size; a gap before the set existed
    fixed = lines["deployed macro_f1, fixed held-out set, n=150"].get_ydata()
    assert np.isnan(fixed[0]) and list(fixed[1:]) == pytest.approx([0.65, 0.65])
    # below: one interval per judged iteration (none for the first model)
    assert len(bottom.containers) == 2
    decode_png(plots.demo_png(rows))
    unfixed = {ln.get_label() for ln in plots.demo_figure(rows[:1]).axes[0].get_lines()}
    assert "deployed macro_f1, no fixed held-out set yet" in unfixed  # said, not drawn as a score
