"""Benchmark: the promotion gate's rules on replayed turns with known effects (`flywheel bench gate`).

Each replayed turn draws paired predictions of a champion and a challenger on the same test frames:
4 conditions x 4 classes, `n` frames per condition and per class. The champion gets a
frame right with probability `CHAMPION_ACCURACY`; the challenger's true difference on a frame is
the scenario's overall effect plus its slice's effect, made with `CHURN` discordant frames (a
challenger gains some frames and loses others, as retrained models do). The truth is known, so each
decision is right or wrong:

    false promotion  a scenario where the challenger is truly worse somewhere (or no better) promoted
    false block      a scenario where the challenger is truly better everywhere was kept back

Rules replayed on the same draws (the intervals are `flywheel.evaluation.gate`'s, on accuracy):

    old   promote when the point gain is above the margin (0) and no slice of >= 30 frames is
          *proven* worse (its whole interval below -0.05); classes not gated, nothing critical
    new   `flywheel.evaluation.gate.decide` at the given tolerance and min frames, critical condition=* and
          class=*: the overall gain's lower end above the margin, every gated slice's lower end
          above -tolerance, an inconclusive critical slice fails closed

A second table gives, per slice size and tolerance, how often one slice passes the non-inferiority
test at a few true differences: the frames a slice needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from flywheel.config import GateSettings
from flywheel.evaluation.gate import PairedPredictions, decide, slice_deltas

CONDITIONS = ("clear", "rain", "night", "fog")
CLASSES = 4
CHAMPION_ACCURACY = 0.85
CHURN = 0.10  # share of frames where the two models disagree on being right, at no true difference
OLD_MIN_FRAMES, OLD_TOLERANCE = 30, 0.05
# name: (overall effect, {slice: extra effect}, whether a good gate promotes it)
SCENARIOS: dict[str, tuple[float, dict[str, float], bool]] = {
    "better everywhere (+0.03)": (0.03, {}, True),
    "clearly better (+0.06)": (0.06, {}, True),
    "no change": (0.0, {}, False),
    "slightly worse (-0.02)": (-0.02, {}, False),
    "better, fog -0.10": (0.04, {"condition=fog": -0.14}, False),
    "better, fog -0.06": (0.04, {"condition=fog": -0.10}, False),
    "better, one class -0.10": (0.04, {"class=3": -0.14}, False),
}
SIZES = (100, 300)
TOLERANCES = (0.05, 0.10)
SLICE_SIZES = (30, 50, 100, 200, 300, 500, 1000)
SLICE_EFFECTS = (0.03, 0.0, -0.05, -0.10)


def draw_turn(rng: np.random.Generator, n: int, overall: float, effects: dict[str, float],
              *, accuracy: float = CHAMPION_ACCURACY, churn: float = CHURN) -> PairedPredictions:  # fmt: skip
    """Paired predictions on 4 x `n` frames: the challenger's true difference per frame is
    `overall` plus the effects of its condition and class slices ("condition=fog", "class=3")."""
    size = n * len(CONDITIONS)
    condition = np.repeat(CONDITIONS, n)
    labels = rng.permutation(np.arange(size) % CLASSES)  # n frames per class too
    delta = np.full(size, overall)
    for name, effect in effects.items():
        column, value = name.split("=", 1)
        delta += effect * ((condition == value) if column == "condition" else (labels == int(value)))
    c = np.maximum(churn, np.abs(delta) + 0.02)  # disagreement: at least the difference itself
    gain, loss = (c + delta) / 2, (c - delta) / 2  # shares of frames the challenger wins / loses
    champ_right = rng.random(size) < accuracy
    u = rng.random(size)
    chall_right = np.where(champ_right, u >= loss / accuracy, u < gain / (1 - accuracy))
    wrong = (labels + 1) % CLASSES

    return PairedPredictions(labels, np.where(chall_right, labels, wrong), np.where(champ_right, labels, wrong),
                             {"condition": condition.tolist()}, num_classes=CLASSES,
                             class_names=[str(k) for k in range(CLASSES)])  # fmt: skip


def old_rule(paired: PairedPredictions) -> bool:
    """The gate before the burden of proof: a point gain above 0 and no proven slice regression."""
    settings = GateSettings(metric="accuracy", slice_tolerance=OLD_TOLERANCE, min_slice_frames=OLD_MIN_FRAMES,
                            critical_slices=[])  # fmt: skip
    gain = np.mean(paired.challenger == paired.labels) - np.mean(paired.champion == paired.labels)
    old_slices = PairedPredictions(paired.labels, paired.challenger, paired.champion, paired.slices,
                                   num_classes=paired.num_classes)  # no class slices then  # fmt: skip
    proven = [s for s in slice_deltas(old_slices, settings) if s.n >= OLD_MIN_FRAMES and s.high < -OLD_TOLERANCE]
    return bool(gain > 0 and not proven)


def new_rule(tolerance: float, min_frames: int) -> Callable[[PairedPredictions], bool]:
    settings = GateSettings(metric="accuracy", slice_tolerance=tolerance, min_slice_frames=min_frames)

    def rule(paired: PairedPredictions) -> bool:
        ch = float(np.mean(paired.challenger == paired.labels))
        cp = float(np.mean(paired.champion == paired.labels))
        return decide({"accuracy": ch}, {"accuracy": cp}, settings, paired=paired).passed

    return rule


def bench_gate(*, reps: int = 200, sizes: tuple[int, ...] = SIZES, tolerances: tuple[float, ...] = TOLERANCES,
               min_frames: int = 100, seed: int = 0, on_row: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Promotion rates of the old rule and the new one (each tolerance) per scenario and slice size,
    over `reps` replayed turns; then the single-slice pass rates (the frames a slice needs)."""
    t0 = time.perf_counter()
    rules = {"old": old_rule, **{f"new tol {t:.2f}": new_rule(t, min_frames) for t in tolerances}}
    rows = []
    for n in sizes:
        for k, (name, (overall, effects, good)) in enumerate(SCENARIOS.items()):
            rng = np.random.default_rng([seed, n, k])
            promoted = dict.fromkeys(rules, 0)
            for _ in range(reps):
                paired = draw_turn(rng, n, overall, effects)
                for rule, fn in rules.items():
                    promoted[rule] += fn(paired)
            row = {"frames_per_condition": n, "scenario": name, "should_promote": good, "reps": reps,
                   **{rule: round(p / reps, 3) for rule, p in promoted.items()}}  # fmt: skip
            rows.append(row)
            if on_row is not None:
                on_row(row)
    per_slice = slice_pass_rates(reps=reps, tolerances=tolerances, seed=seed)
    return {"config": {"reps": reps, "sizes": list(sizes), "tolerances": list(tolerances), "min_frames": min_frames,
                       "champion_accuracy": CHAMPION_ACCURACY, "churn": CHURN, "seed": seed,
                       "old_rule": {"min_frames": OLD_MIN_FRAMES, "tolerance": OLD_TOLERANCE, "margin": 0.0}},
            "rows": rows, "rates": error_rates(rows, list(rules)), "slice_pass_rates": per_slice,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def error_rates(rows: list[dict], rules: list[str]) -> list[dict]:
    """Per slice size and rule: the mean false-promotion rate (over scenarios that should be kept
    back) and false-block rate (over scenarios that should promote)."""
    out = []
    for n in dict.fromkeys(r["frames_per_condition"] for r in rows):
        group = [r for r in rows if r["frames_per_condition"] == n]
        for rule in rules:
            bad = [r[rule] for r in group if not r["should_promote"]]
            good = [1 - r[rule] for r in group if r["should_promote"]]
            out.append({"frames_per_condition": n, "rule": rule,
                        "false_promotion": round(float(np.mean(bad)), 3), "worst_false_promotion": round(max(bad), 3),
                        "false_block": round(float(np.mean(good)), 3)})  # fmt: skip
    return out


def slice_pass_rates(*, reps: int, tolerances: tuple[float, ...], seed: int = 0) -> list[dict]:
    """How often one slice of n frames is shown non-inferior (lower end above -tolerance) when its
    true difference is each of SLICE_EFFECTS."""
    out = []
    for n in SLICE_SIZES:
        for effect in SLICE_EFFECTS:
            rng = np.random.default_rng([seed, n, int(effect * 1000) + 1000])
            lows = []
            for _ in range(reps):
                paired = draw_turn(rng, n, effect, {})
                one = PairedPredictions(paired.labels[:n], paired.challenger[:n], paired.champion[:n],
                                        {"condition": paired.slices["condition"][:n]}, num_classes=CLASSES)  # fmt: skip
                lows.append(slice_deltas(one, GateSettings(metric="accuracy", critical_slices=[]))[0].low)
            lows = np.array(lows)
            out.append({"frames": n, "true_delta": effect,
                        **{f"passes at tol {t:.2f}": round(float(np.mean(lows > -t)), 3) for t in tolerances}})  # fmt: skip
    return out


def markdown(result: dict) -> str:
    rules = [k for k in result["rows"][0] if k == "old" or k.startswith("new")]
    lines = ["| frames per condition | scenario | should promote | " + " | ".join(rules) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in rules) + " |"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['frames_per_condition']} | {r['scenario']} | {'yes' if r['should_promote'] else 'no'} | "
                     + " | ".join(f"{r[k]:.2f}" for k in rules) + " |")  # fmt: skip
    lines += ["", "| frames per condition | rule | false promotion (mean) | worst | false block |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in result["rates"]:
        lines.append(f"| {r['frames_per_condition']} | {r['rule']} | {r['false_promotion']:.3f} | "
                     f"{r['worst_false_promotion']:.3f} | {r['false_block']:.3f} |")  # fmt: skip
    tols = [k for k in result["slice_pass_rates"][0] if k.startswith("passes")]
    lines += ["", "| slice frames | true delta | " + " | ".join(tols) + " |", "| --- | --- | " + " | ".join("---" for _ in tols) + " |"]
    for r in result["slice_pass_rates"]:
        lines.append(f"| {r['frames']} | {r['true_delta']:+.2f} | " + " | ".join(f"{r[k]:.2f}" for k in tols) + " |")
    return "\n".join(lines)
