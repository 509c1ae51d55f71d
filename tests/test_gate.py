"""The promotion gate: table tests over paired predictions, critical slices, fail-closed cases."""

import json

import numpy as np
import pytest

from flywheel import evaluate
from flywheel.config import GateSettings
from flywheel.gate import GateDecision, PairedPredictions, _score_rows, decide

C = 3  # classes


def frames(slices: dict[str, tuple[int, float, float]]):
    """Evaluation frames per condition: (n, challenger accuracy, champion accuracy).

    Within a slice the challenger's correct frames are a subset of the champion's or the other way
    round (the frames both get right are shared), as two models of one lineage tend to be.
    """
    y, a, b, cond = [], [], [], []
    for name, (n, acc_a, acc_b) in slices.items():
        labels = np.arange(n) % C
        ra, rb = round(acc_a * n), round(acc_b * n)
        y.append(labels)
        a.append(np.where(np.arange(n) < ra, labels, (labels + 1) % C))
        b.append(np.where(np.arange(n) < rb, labels, (labels + 1) % C))
        cond += [name] * n
    return np.concatenate(y), np.concatenate(a), np.concatenate(b), cond


def case(slices, *, champion=True):
    """(challenger report, champion report or None, paired predictions) for `slices`."""
    y, a, b, cond = frames(slices)

    def report(pred):
        return evaluate.score(np.eye(C, dtype=np.float32)[pred], y, classes=["a", "b", "c"],
                              slices={"condition": cond})  # fmt: skip

    paired = PairedPredictions(y, a, b, {"condition": cond}, num_classes=C)
    return report(a), (report(b) if champion else None), (paired if champion else None)


SETTINGS = GateSettings(metric="accuracy", margin=0.01, slice_tolerance=0.05, floor=0.5, min_slice_frames=20)
CRITICAL_FOG = SETTINGS.model_copy(update={"critical_slices": ["condition=fog"], "min_slice_frames": 100})

CASES = [
    # id, slices {condition: (n, challenger acc, champion acc)}, settings, passed, reason fragment, regressed
    ("beats", {"day": (200, 0.90, 0.85), "fog": (50, 0.70, 0.70)}, SETTINGS, True, "beats the champion", []),
    ("ties", {"day": (200, 0.85, 0.85)}, SETTINGS, False, "does not beat", []),
    ("below margin", {"day": (200, 0.855, 0.85)}, SETTINGS, False, "does not beat", []),
    ("worse", {"day": (200, 0.75, 0.85)}, SETTINGS, False, "delta -0.1000", ["condition=day"]),
    ("a slice that surely regresses", {"day": (400, 0.95, 0.80), "fog": (60, 0.50, 0.80)}, SETTINGS, False,
     "1 slice(s) regress beyond 0.0500: condition=fog -0.3000", ["condition=fog"]),
    ("a drop within the noise of a small slice", {"day": (400, 0.95, 0.80), "fog": (20, 0.60, 0.70)}, SETTINGS,
     True, "no slice regression", []),
    ("a slice below min_slice_frames is reported, not gated", {"day": (400, 0.95, 0.80), "fog": (10, 0.0, 1.0)},
     SETTINGS, True, "no slice regression", []),
    ("a critical slice with too few frames fails closed", {"day": (400, 0.95, 0.80), "fog": (31, 0.9, 0.5)},
     CRITICAL_FOG, False, "not enough fog frames to judge (31 < 100)", []),
    ("a critical slice with enough frames is judged", {"day": (400, 0.95, 0.80), "fog": (120, 0.9, 0.85)},
     CRITICAL_FOG, True, "no slice regression", []),
]  # fmt: skip


@pytest.mark.parametrize("slices, settings, passed, reason, regressed", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_gate_table(slices, settings, passed, reason, regressed):
    ch, cp, paired = case(slices)
    d = decide(ch, cp, settings, paired=paired)
    assert isinstance(d, GateDecision)
    assert d.passed is passed and d.forced is False
    assert reason in d.reason
    assert [r.slice for r in d.slice_regressions] == regressed
    assert d.primary.name == settings.metric and d.primary.champion == cp[settings.metric]
    assert {s.slice for s in d.slices} == {f"condition={k}" for k in slices}  # every slice is reported


def test_replay_of_the_fog_slice_the_old_gate_let_through():
    """Demo iteration 3: the challenger scored 0.26 on fog against the champion's 0.44, on a slice
    under the old 50-frame threshold, and the gate passed. Overall the challenger was better."""
    slices = {"day": (270, 0.92, 0.85), "fog": (31, 0.26, 0.44)}
    ch, cp, paired = case(slices)
    old = SETTINGS.model_copy(update={"min_slice_frames": 50})
    assert decide(ch, cp, old, paired=paired).passed  # not gated: too small for the old rule ...
    d = decide(ch, cp, SETTINGS.model_copy(update={"min_slice_frames": 30}), paired=paired)
    fog = next(s for s in d.slices if s.slice == "condition=fog")
    assert not d.passed and fog.regressed  # ... but the paired interval is sure of the drop
    assert fog.n == 31 and fog.delta == pytest.approx(8 / 31 - 14 / 31) and fog.high < -0.05
    closed = decide(ch, cp, CRITICAL_FOG, paired=paired)
    assert not closed.passed and closed.reason.startswith("not enough fog frames to judge (31 < 100)")


def test_intervals_are_paired_and_deterministic():
    ch, cp, paired = case({"day": (300, 0.80, 0.78)})
    a = decide(ch, cp, SETTINGS, paired=paired).slices[0]
    b = decide(ch, cp, SETTINGS, paired=paired).slices[0]
    assert a == b  # seeded: the same evidence, the same decision
    assert a.low <= a.delta <= a.high and a.low >= 0  # nested correct sets: the challenger never loses a frame
    assert a.high - a.low < 0.05  # 6 discordant frames of 300: a narrow interval


@pytest.mark.parametrize("champion_classes_allowed, passed", [(False, False), (True, True)])
def test_a_new_class_list_needs_an_explicit_allowance(champion_classes_allowed, passed):
    ch, _, _ = case({"day": (100, 0.9, 0.9)}, champion=False)
    settings = SETTINGS.model_copy(update={"allow_new_classes": champion_classes_allowed})
    d = decide(ch, None, settings, classes_changed=True)
    assert d.passed is passed
    assert ("not comparable" in d.reason) is (not passed) and ("new class list" in d.reason) is passed


@pytest.mark.parametrize("accuracy, passed, words", [(0.55, True, "reaches"), (0.5, True, "reaches"),
                                                     (0.45, False, "is below")])  # fmt: skip
def test_first_model_against_the_floor(accuracy, passed, words):
    ch, _, _ = case({"day": (200, accuracy, 0.0)}, champion=False)
    d = decide(ch, None, SETTINGS)
    assert d.passed is passed and f"first model: accuracy {accuracy:.4f} {words} the floor" in d.reason


def test_first_model_also_needs_its_critical_slices():
    ch, _, _ = case({"day": (200, 0.9, 0.0), "fog": (12, 0.9, 0.0)}, champion=False)
    d = decide(ch, None, CRITICAL_FOG)
    assert not d.passed and "not enough fog frames to judge (12 < 100)" in d.reason


@pytest.mark.parametrize("champion", [False, True], ids=["first model", "with champion"])
def test_forced_promotion_passes_and_records_why(champion):
    settings = SETTINGS.model_copy(update={"force": True, "force_reason": "alice: hotfix for fog"})
    ch, cp, paired = case({"day": (100, 0.1, 0.9)}, champion=champion)
    d = decide(ch, cp, settings, paired=paired)
    assert d.passed is True and d.forced is True
    assert "alice: hotfix for fog" in d.reason
    assert d.details["would_have_passed"] is False


def test_decision_is_json_able_with_every_slice():
    ch, cp, paired = case({"day": (400, 0.95, 0.80), "fog": (60, 0.50, 0.80)})
    back = json.loads(json.dumps(decide(ch, cp, SETTINGS, paired=paired).to_dict()))
    assert back["passed"] is False and back["primary"]["name"] == "accuracy"
    assert back["slice_regressions"][0]["slice"] == "condition=fog"
    fog = next(s for s in back["slices"] if s["slice"] == "condition=fog")
    assert set(fog) == {"slice", "n", "challenger", "champion", "delta", "low", "high", "gated", "regressed"}


def test_bad_input_is_an_error_not_a_failed_gate():
    with pytest.raises(ValueError, match="challenger report has no 'macro_f1'"):
        decide({"accuracy": 0.9}, None, GateSettings())
    ch, cp, paired = case({"day": (50, 0.9, 0.8)})
    with pytest.raises(ValueError, match="champion report has no 'accuracy'"):
        decide(ch, {"macro_f1": 0.9}, SETTINGS, paired=paired)
    with pytest.raises(ValueError, match="needs both models' predictions"):
        decide(ch, cp, SETTINGS)
    with pytest.raises(ValueError, match="champion predictions have 2 entries for 3 labels"):
        PairedPredictions(np.zeros(3), np.zeros(3), np.zeros(2), {}, num_classes=2)


def test_bootstrap_macro_f1_matches_the_evaluation_metric():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, (5, 40)), rng.integers(0, 4, (5, 40))
    p[0] = y[0]  # a perfect row
    p[1] = 3  # a row predicting one class only
    got = _score_rows(y, p, "macro_f1", 4)
    want = [evaluate.macro_f1(evaluate.confusion_matrix(p[i], y[i], 4)) for i in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-12)
