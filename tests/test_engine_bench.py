"""The engine benchmark runs its arms end to end on a tiny scale and reports comparable figures."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks.engine import curve, label_ratio, markdown, paired
from benchmarks.recipe import interval
from flywheel.cli import main
from flywheel.config import EngineSettings


@pytest.mark.slow
def test_bench_engine_quick_runs_the_arms_through_the_pipeline_and_writes_curves_and_plot(tmp_path):
    result = CliRunner().invoke(main, ["bench", "engine", "--quick", "--arms", "engine,random,engine_novelty",
                                       "--out", str(tmp_path / "out"), "--workdir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "out" / "engine_ab_quick.json").read_text())
    assert (tmp_path / "out" / "engine_ab_quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["config"]["seeds"] == [0]
    assert list(out["curves"]) == ["random", "engine", "engine_novelty"]
    runs = out["runs"]
    random, engine, novelty = runs["random"][0], runs["engine"][0], runs["engine_novelty"][0]
    # paired arms: before any model is deployed every arm uploads and labels the same frames and trains on them; the
    # default engine adds its synthetic frames of scarce conditions from the first batch on (they need no model)
    assert len({(r[0]["accuracy"], r[0]["fog_accuracy"], r[0]["train_frames"]) for r in (random, novelty)}) == 1
    assert random[0]["synthesized"] == novelty[0]["synthesized"] == {} and engine[0]["synthesized"]
    assert engine[0]["train_frames"] == random[0]["train_frames"] + sum(engine[0]["synthesized"].values())
    assert engine[0]["uploaded_fog_clips"] == random[0]["uploaded_fog_clips"]
    assert [r["human_labels_total"] for r in random] == [32, 64]  # the whole budget, every iteration
    spent = [r["human_labels_total"] for r in engine]  # at most the budget: frames the champion auto-labels are not queued
    assert spent[0] == 32 and 32 < spent[1] <= 64
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["fog_accuracy"] <= 1 for r in engine)
    assert all(r["auto_labels"] == 0 for r in random)  # the random arm labels by hand only
    assert engine[0]["triggers"].keys() <= {"random", "hard_brake"}  # no champion yet: no shadow mode
    assert engine[1]["triggers"].keys() <= {"random", "hard_brake", "low_confidence"}
    assert novelty[1]["triggers"].keys() <= {"random", "hard_brake", "novel"}
    # one upload budget: every arm records the same clips and uploads the same hard brakes among them
    assert out["config"]["recorded_per_iteration"] == 16
    for it in (0, 1):
        assert {r[it]["recorded"] for r in (random, engine, novelty)} == {16}
        assert len({r[it]["triggers"].get("hard_brake", 0) for r in (random, engine, novelty)}) == 1
    # only shadow mode by confidence uploads low_confidence clips
    assert "low_confidence" not in random[1]["triggers"] and "low_confidence" not in novelty[1]["triggers"]
    c = out["curves"]["random"]["fog_accuracy"]
    assert c["labels"] == [32, 64] and c["mean"] == c["min"] == c["max"] == [r["fog_accuracy"] for r in random]
    assert out["label_ratio"]["engine"]["target"] == random[-1]["fog_accuracy"]
    assert set(out["label_ratio"]) == {"engine", "engine_novelty"}
    step = out["paired"]["engine"]["fog_accuracy"][1]  # one seed: a difference, no interval
    assert step["mean"] == round(engine[1]["fog_accuracy"] - random[1]["fog_accuracy"], 4) and step["half"] == 0
    assert not step["below"] and not step["above"]
    assert "| engine |" in markdown(out)
    # each other arm against the whole engine, same seed (what the parts it leaves out are worth)
    assert set(out["paired_with_engine"]) == {"engine_novelty"}
    vs = out["paired_with_engine"]["engine_novelty"]["fog_accuracy"][1]
    assert vs["mean"] == round(novelty[1]["fog_accuracy"] - engine[1]["fog_accuracy"], 4) and vs["half"] == 0
    assert "| arm − engine, same seed" in markdown(out) and "| engine_novelty |" in markdown(out)
    assert not (tmp_path / "out" / "engine_ab_quick.partial.json").exists()  # gone once the whole is written
    wrong = CliRunner().invoke(main, ["bench", "engine", "--quick", "--arms", "engine,bogus", "--workdir", str(tmp_path)])
    assert wrong.exit_code == 2 and "bogus" in wrong.output
    bad_set = CliRunner().invoke(main, ["bench", "engine", "--quick", "--set", "train.bogus=1", "--workdir", str(tmp_path)])
    assert bad_set.exit_code == 2 and "--set" in bad_set.output and "bogus" in bad_set.output


@pytest.mark.slow
def test_resume_takes_the_finished_flywheels_of_an_interrupted_run_and_runs_the_others(tmp_path):
    """An interrupted run leaves NAME.partial.json; --resume takes its flywheels (here a random arm whose
    accuracy was marked, so a rerun would show) and runs only the others; a partial of another run is refused."""
    folder = tmp_path / "out"
    base = ["bench", "engine", "--quick", "--out", str(folder), "--workdir", str(tmp_path)]
    first = CliRunner().invoke(main, [*base, "--arms", "random"])
    assert first.exit_code == 0, first.output
    random = json.loads((folder / "engine_ab_quick.json").read_text())["runs"]["random"][0]
    marked = [{**r, "accuracy": 0.123456} for r in random]
    config = {"world": "road", "arms": ["random", "synth_only"], "seeds": [0]}  # what an older partial holds
    partial = folder / "engine_ab_quick.partial.json"
    partial.write_text(json.dumps({"partial": True, "config": config, "runs": {"random": [marked]}}))
    # a result that names no share of synthetic frames was made at 0.2, before the default moved to 0.3
    older = ["--arms", "random,synth_only", "--synth-share", "0.2"]
    now = CliRunner().invoke(main, [*base, "--arms", "random,synth_only", "--resume"])
    assert now.exit_code == 2 and "is from another run" in now.output and "'synth_share': (0.2, 0.3)" in now.output
    resumed = CliRunner().invoke(main, [*base, *older, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and "random seeds [0]" in resumed.output
    out = json.loads((folder / "engine_ab_quick.json").read_text())
    assert out["runs"]["random"] == [marked] and out["config"]["resumed"] == {"random": [0]}
    assert [r["iteration"] for r in out["runs"]["synth_only"][0]] == [1, 2]  # run now
    assert out["runs"]["synth_only"][0][0]["synthesized"]
    assert not partial.exists()
    gone = CliRunner().invoke(main, [*base, *older, "--resume"])
    assert gone.exit_code == 2 and "nothing to resume" in gone.output
    partial.write_text(json.dumps({"partial": True, "config": {**config, "seeds": [1]}, "runs": {"random": [marked]}}))
    other = CliRunner().invoke(main, [*base, *older, "--resume"])
    assert other.exit_code == 2 and "is from another run" in other.output and "seeds" in other.output
    # --reuse: an ablation takes the flywheels another result holds of its arms and seeds (here all of them: nothing
    # runs again) and names the file; a result of another world or size is refused before anything runs
    done = folder / "engine_ab_quick.json"
    again = CliRunner().invoke(main, [*base, *older, "--name", "again", "--reuse", str(done)])
    assert again.exit_code == 0, again.output
    taken = json.loads((folder / "again_quick.json").read_text())
    assert taken["runs"] == out["runs"] and taken["config"]["reused"] == {done.name: {"random": [0], "synth_only": [0]}}
    # another share of synthetic frames (the default, the flywheel's): the random arm is reused, the arm with
    # synthetic frames runs again
    share = CliRunner().invoke(main, [*base, "--arms", "random,synth_only", "--name", "share", "--reuse", str(done)])
    assert share.exit_code == 0, share.output
    assert "not reused from" in share.output and "synth_only (synthetic frames at another share)" in share.output
    shared = json.loads((folder / "share_quick.json").read_text())
    assert shared["config"]["synth_share"] == EngineSettings().synthesize_share == 0.3
    assert shared["config"]["reused"] == {done.name: {"random": [0]}}
    assert shared["runs"]["random"] == out["runs"]["random"]
    copies = [sum(r[0][0]["synthesized"].values()) for r in (out["runs"]["synth_only"], shared["runs"]["synth_only"])]
    assert 0 < copies[0] < copies[1]
    junk = folder / "junk.json"
    junk.write_text("not json")
    bad = CliRunner().invoke(main, [*base, "--name", "junk", "--reuse", str(junk)])
    assert bad.exit_code == 2 and "--reuse" in bad.output and "junk.json is not a bench engine result" in bad.output
    digits = CliRunner().invoke(main, [*base, "--world", "digits", "--name", "digits", "--reuse", str(done)])
    assert digits.exit_code == 2 and "--reuse" in digits.output and "'world': ('road', 'digits')" in digits.output
    assert not (folder / "digits_quick.partial.json").exists() and not (folder / "digits_quick.json").exists()


def test_paired_differences_flag_an_arm_significantly_below_random():
    def rows(values):
        return [{"human_labels_total": 100 * (i + 1), "fog_accuracy": v} for i, v in enumerate(values)]

    random = [rows([0.2, 0.4]), rows([0.3, 0.5]), rows([0.1, 0.6])]
    worse = [rows([0.2, 0.30]), rows([0.3, 0.41]), rows([0.1, 0.49])]  # the same first iteration, then ~0.1 below
    noisy = [rows([0.2, 0.6]), rows([0.3, 0.3]), rows([0.1, 0.6])]
    first, second = paired(worse, random, "fog_accuracy")
    assert first == {"iteration": 1, "mean": 0.0, "half": 0.0, "seeds": 3, "below": False, "above": False}
    assert second["below"] and second["mean"] == -0.1 and 0 < second["half"] < 0.1
    assert not any(p["below"] or p["above"] for p in paired(noisy, random, "fog_accuracy"))
    assert curve(worse, "fog_accuracy")["half"][0] == round(interval([0.2, 0.3, 0.1])[1], 4)


def test_label_ratio_reads_the_mean_curves_at_the_iterations():
    def rows(values):
        return [{"human_labels_total": 100 * (i + 1), "fog_accuracy": v} for i, v in enumerate(values)]

    random = curve([rows([0.1, 0.3, 0.5]), rows([0.1, 0.3, 0.7])], "fog_accuracy")  # final mean 0.6
    assert random["mean"] == [0.1, 0.3, 0.6] and random["min"] == [0.1, 0.3, 0.5]
    fast = curve([rows([0.2, 0.6, 0.8])], "fog_accuracy")
    assert label_ratio(fast, random) == {"target": 0.6, "random_labels": 300.0, "engine_labels": 200.0, "ratio": 0.667}
    slow = curve([rows([0.2, 0.3, 0.59])], "fog_accuracy")
    assert label_ratio(slow, random)["ratio"] is None  # never reached: no ratio, not a made-up one


def test_bench_label_errors_tiny(tmp_path):
    """Errors injected at a known rate are counted, and flags are scored against them."""
    from benchmarks.label_errors import THRESHOLDS, bench_label_errors

    out = bench_label_errors(tmp_path, batches=2, clips=20, label_budget=60, error_rate=0.5, steps=10)
    assert out["human_labels_checked"] == 60  # the second batch's answers (the first trains the champion)
    assert 15 <= out["injected_errors"] <= 45  # half of 60, give or take the draw
    rows = out["rows"]
    assert [r["min_score"] for r in rows] == list(THRESHOLDS)
    assert [r["flagged"] for r in rows] == sorted((r["flagged"] for r in rows), reverse=True)  # stricter: fewer
    for r in rows:
        assert 0 <= r["true_errors_flagged"] <= min(r["flagged"], out["injected_errors"])
        assert r["recall"] == round(r["true_errors_flagged"] / out["injected_errors"], 3)


def test_bench_label_errors_on_another_dataset_flips_its_labels_and_scores_the_flags(tmp_path):
    """The frames variant: a champion of one stream checks a disjoint stream's labels, flipped at a known rate."""
    from benchmarks.label_errors import THRESHOLDS, bench_label_errors_frames

    out = bench_label_errors_frames("digits", tmp_path, frames=64, error_rate=0.5, overrides={"train.steps": 10})
    assert out["dataset"] == "digits" and out["config"]["train_steps"] == 10
    checked = out["human_labels_checked"]
    assert checked >= 64 and 0.3 * checked <= out["injected_errors"] <= 0.7 * checked  # half, give or take the draw
    assert set(out["by_source"]) == {"champion", "cross_validated", "blend (default)"}
    for rows in out["by_source"].values():
        assert [r["min_score"] for r in rows] == list(THRESHOLDS)
        assert [r["flagged"] for r in rows] == sorted((r["flagged"] for r in rows), reverse=True)
        for r in rows:
            assert 0 <= r["true_errors_flagged"] <= min(r["flagged"], out["injected_errors"])
    assert 0 <= out["champion_accuracy"] <= 1


def test_an_interrupted_bench_engine_keeps_the_flywheels_it_finished(tmp_path, monkeypatch):
    import benchmarks.engine

    finish = benchmarks.engine.run_arm

    def run_arm(arm, *args, **kwargs):
        if arm == "engine_novelty":
            raise KeyboardInterrupt  # as a person stopping a long run after its first flywheel
        return finish(arm, *args, **kwargs)

    monkeypatch.setattr(benchmarks.engine, "run_arm", run_arm)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "engine", "--quick", "--arms", "random,engine_novelty",
                                       "--out", str(out), "--workdir", str(tmp_path)])  # fmt: skip
    assert result.exit_code != 0 and not (out / "engine_ab_quick.json").exists()
    kept = json.loads((out / "engine_ab_quick.partial.json").read_text())
    assert kept["partial"] and list(kept["runs"]) == ["random"] and kept["config"]["seeds"] == [0]
    assert [r["iteration"] for r in kept["runs"]["random"][0]] == [1, 2]
    assert kept["command"].startswith("flywheel bench engine")
