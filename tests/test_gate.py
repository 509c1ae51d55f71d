import json

import pytest

from flywheel.config import GateSettings
from flywheel.gate import GateDecision, SliceRegression, decide


def report(
    macro_f1: float, slices: dict[str, tuple[float, int]] | None = None, accuracy: float = 0.9
):
    """A minimal evaluation report: slices map name -> (macro_f1, n)."""
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "per_slice": {
            k: {"macro_f1": v, "accuracy": v, "n": n} for k, (v, n) in (slices or {}).items()
        },
    }


SETTINGS = GateSettings(
    metric="macro_f1", margin=0.01, slice_tolerance=0.05, floor=0.5, min_slice_frames=20
)
FOG_OK = {"condition=fog": (0.70, 50)}

CASES = [
    # id, challenger, champion, settings, passed, reason fragment, regressed slices
    ("beats", report(0.85, FOG_OK), report(0.80, FOG_OK), SETTINGS, True, "beats the champion", []),
    ("ties", report(0.80, FOG_OK), report(0.80, FOG_OK), SETTINGS, False, "does not beat", []),
    ("float tie at margin", report(0.81), report(0.80), SETTINGS, False, "does not beat", []),
    ("below margin", report(0.805), report(0.80), SETTINGS, False, "does not beat", []),
    ("worse", report(0.70), report(0.80), SETTINGS, False, "delta -0.1000", []),
    ("slice regression", report(0.90, {"condition=fog": (0.60, 50)}), report(0.80, FOG_OK), SETTINGS,
     False, "1 slice(s) drop more than 0.0500: condition=fog -0.1000", ["condition=fog"]),
    ("slice drop within tolerance", report(0.90, {"condition=fog": (0.66, 50)}), report(0.80, FOG_OK),
     SETTINGS, True, "no slice regression", []),
    ("small slice ignored", report(0.90, {"condition=fog": (0.10, 19)}), report(0.80, {"condition=fog": (0.70, 30)}),
     SETTINGS, True, "no slice regression", []),
    ("slice only on one side ignored", report(0.90, {"camera=rear": (0.1, 50)}), report(0.80), SETTINGS, True,
     "no slice regression", []),
    ("first model above floor", report(0.55), None, SETTINGS, True, "reaches the floor", []),
    ("first model at floor", report(0.5), None, SETTINGS, True, "reaches the floor", []),
    ("first model below floor", report(0.45), None, SETTINGS, False, "is below the floor", []),
    ("accuracy metric", report(0.70, accuracy=0.95), report(0.90, accuracy=0.90),
     SETTINGS.model_copy(update={"metric": "accuracy"}), True, "accuracy 0.9500", []),
]  # fmt: skip


@pytest.mark.parametrize("challenger, champion, settings, passed, reason, regressed",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_gate_table(challenger, champion, settings, passed, reason, regressed):
    d = decide(challenger, champion, settings)
    assert isinstance(d, GateDecision)
    assert d.passed is passed and d.forced is False
    assert reason in d.reason
    assert [r.slice for r in d.slice_regressions] == regressed
    assert d.primary.name == settings.metric
    assert d.primary.champion == (None if champion is None else champion[settings.metric])


def test_slice_regression_is_recorded_with_its_numbers():
    d = decide(report(0.90, {"condition=fog": (0.60, 50)}), report(0.80, FOG_OK), SETTINGS)
    (r,) = d.slice_regressions
    assert r == SliceRegression("condition=fog", 0.60, 0.70, pytest.approx(0.10))
    assert d.details["slices_not_gated"] == []


def test_small_slice_is_listed_as_not_gated():
    d = decide(
        report(0.90, {"condition=fog": (0.10, 19)}),
        report(0.80, {"condition=fog": (0.7, 30)}),
        SETTINGS,
    )
    assert d.details["slices_not_gated"] == ["condition=fog"]


@pytest.mark.parametrize("champion", [None, report(0.90)], ids=["first model", "with champion"])
def test_forced_promotion_passes_and_records_why(champion):
    settings = SETTINGS.model_copy(update={"force": True, "force_reason": "alice: hotfix for fog"})
    d = decide(report(0.10), champion, settings)
    assert d.passed is True and d.forced is True
    assert "alice: hotfix for fog" in d.reason
    assert d.details["would_have_passed"] is False


def test_decision_is_json_able():
    d = decide(report(0.90, {"condition=fog": (0.60, 50)}), report(0.80, FOG_OK), SETTINGS)
    back = json.loads(json.dumps(d.to_dict()))
    assert back["passed"] is False
    assert back["primary"] == {
        "name": "macro_f1",
        "challenger": 0.9,
        "champion": 0.8,
        "margin": 0.01,
    }
    assert back["slice_regressions"][0]["slice"] == "condition=fog"


def test_a_report_without_the_metric_is_an_error_not_a_failed_gate():
    with pytest.raises(ValueError, match="challenger report has no 'macro_f1'"):
        decide({"accuracy": 0.9}, None, SETTINGS)
    with pytest.raises(ValueError, match="champion report has no 'macro_f1'"):
        decide(report(0.9), {"accuracy": 0.9}, SETTINGS)
