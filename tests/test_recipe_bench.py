"""The recipe benchmark: both arms on the same frames and held-out clips, figures that make sense,
and datasets that are what they say (held out by clip, geometry labels that flips change)."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.cli import DATASET_NAMES
from benchmarks.datasets import (
    DATASETS,
    GEOMETRY_CLASSES,
    GEOMETRY_SIZE,
    HEADWAY_CLASSES,
    HEADWAY_LIMITS,
    SIM96_SHARES,
    headway_clips,
    headway_label,
    headway_label_at_row,
    headway_row,
    make_frames,
    render_headway,
    shape_centre_x,
)
from benchmarks.recipe import ARMS, markdown, merge_rerun, summarize
from flywheel.cli import main
from flywheel.sim.render import encode_jpeg


@pytest.mark.slow
def test_bench_recipe_quick_through_the_cli(tmp_path):
    out_file = tmp_path / "recipe.json"
    args = ["bench", "recipe", "--quick", "--datasets", "geometry,digits", "--seeds", "0,1", "--threads", "1",
            "--warm", "--set", "train.width=8", "--set", "train.refit=true", "--set", "train.keep_best=true", "--workdir", str(tmp_path), "--out", str(out_file)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert json.loads(out_file.read_text()) == out  # the stored result is what was printed
    assert not (tmp_path / "recipe.partial.json").exists()  # the rows so far: gone once the whole is written
    assert out["config"]["overrides"]["train.width"] == 8 and out["config"]["train"]["width"] == 8
    assert out["config"]["seeds"] == [0, 1] and out["config"]["yardsticks"] == ["cnn", "resnet18"]
    rows = out["rows"]
    assert [(r["dataset"], r["seed"], r["size"]) for r in rows] == [
        (d, seed, size) for d in ("geometry", "digits") for seed in (0, 1) for size in (96, 192)
    ]  # fmt: skip
    for r in rows:
        classes = DATASETS[r["dataset"]].classes
        arms = ["recipe", "recipe_select", "cnn", "resnet18"] + (["recipe_warm"] if r["size"] == 192 else [])
        assert sorted(a for a in ARMS if a in r) == sorted(arms)
        for arm in arms:
            assert 0 <= r[arm]["accuracy"] <= 1 and 0 <= r[arm]["macro_f1"] <= 1
            assert list(r[arm]["recall"]) == classes
            assert all(0 <= v <= 1 for v in r[arm]["recall"].values())
            assert r[arm]["frames"] == r["heldout_frames"]  # every arm scored on the same frames
            if arm == "recipe_select":  # scored, not timed to accuracy: the refit is the recipe's model
                assert "curve" not in r[arm] and r[arm]["seconds"] < r["recipe"]["seconds"]
                continue
            # time to accuracy: a curve in training seconds, the time to the cnn's accuracy a point on it
            seconds = [t for t, _ in r[arm]["curve"]]
            assert seconds == sorted(seconds) and all(0 <= acc <= 1 for _, acc in r[arm]["curve"])
            target = r["cnn"]["accuracy"]
            expected = next((t for t, acc in r[arm]["curve"] if acc >= target), None)
            assert r[arm]["seconds_to_cnn"] == expected
        for arm in ("cnn", "resnet18", "recipe"):  # the last point is the model it returns
            assert r[arm]["curve"][-1][1] == r[arm]["accuracy"]
        assert r["cnn"]["seconds_to_cnn"] is not None  # the cnn reaches its own final accuracy
        # the refit (the recipe's model) has no val split to pick a best epoch on; the select run keeps its best
        # (train.keep_best, set above: off by default)
        assert r["recipe"]["best_epoch"] is None and r["recipe_select"]["best_epoch"] is not None
        for kind in ("cnn", "resnet18"):
            assert r["delta"][kind] == pytest.approx(r["recipe"]["accuracy"] - r[kind]["accuracy"], abs=1e-4)
            assert r[kind]["learns"] == (r[kind]["accuracy"] >= r["majority_share"] + 0.05)
        assert r["frames"] <= r["pool_frames"]
        assert r["train_rows"] == r["frames"] + r["offline_copies"]
    assert rows[1]["recipe_warm"]["warm_started"] and not rows[1]["recipe"]["warm_started"]
    for name, seed in itertools.product(("geometry", "digits"), (0, 1)):  # one held-out set per seed, any size
        assert len({r["heldout_sha256"] for r in rows if (r["dataset"], r["seed"]) == (name, seed)}) == 1
    assert rows[0]["heldout_sha256"] != rows[2]["heldout_sha256"]  # another seed, other frames
    # The summary: one entry per dataset and size, means over the seeds
    summary = {(e["dataset"], e["size"]): e for e in out["summary"]}
    assert sorted(summary) == sorted((d, s) for d in ("geometry", "digits") for s in (96, 192))
    for (name, size), e in summary.items():
        accs = [r["recipe"]["accuracy"] for r in rows if (r["dataset"], r["size"]) == (name, size)]
        assert e["seeds"] == [0, 1] and e["recipe"]["accuracy"] == pytest.approx(sum(accs) / 2, abs=1e-4)
        assert e["recipe"]["accuracy_ci95"] == pytest.approx(12.71 * abs(accs[0] - accs[1]) / 2, abs=1e-3)
    assert "| geometry | " in out["markdown"]


def test_an_interrupted_bench_recipe_keeps_the_rows_it_finished(tmp_path, monkeypatch):
    import benchmarks.recipe

    finish = benchmarks.recipe.bench_dataset

    def bench_dataset(name, *args, **kwargs):
        if name == "digits":
            raise KeyboardInterrupt  # as a person stopping a long run after its first task
        return finish(name, *args, **kwargs)

    monkeypatch.setattr(benchmarks.recipe, "bench_dataset", bench_dataset)
    out_file = tmp_path / "recipe.json"
    args = ["bench", "recipe", "--quick", "--datasets", "geometry,digits", "--seeds", "0", "--threads", "1",
            "--yardsticks", "cnn", "--workdir", str(tmp_path), "--out", str(out_file)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and not out_file.exists()
    kept = json.loads((tmp_path / "recipe.partial.json").read_text())
    assert kept["partial"] and [(r["dataset"], r["size"]) for r in kept["rows"]] == [("geometry", 96), ("geometry", 192)]
    assert all(r["heldout_sha256"] and {"recipe", "cnn"} <= set(r) for r in kept["rows"])
    assert [(e["dataset"], e["size"]) for e in kept["summary"]] == [("geometry", 96), ("geometry", 192)]
    assert kept["command"].startswith("flywheel bench recipe")  # where the rows came from, as in a whole result


def _row(seed: int, recipe: float, cnn: float, *, learns: bool = True) -> dict:
    arm = {"macro_f1": 0.5, "seconds": 1.0}
    return {"dataset": "d", "size": 10, "seed": seed, "pool_frames": 10, "frames": 8, "majority_share": 0.3,
            "recipe": {**arm, "accuracy": recipe}, "cnn": {**arm, "accuracy": cnn, "learns": learns}}  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "verdict"),
    [
        ([_row(0, 0.9, 0.8), _row(1, 0.7, 0.75)], "recipe ahead"),  # means 0.80 vs 0.775
        ([_row(0, 0.9, 0.95), _row(1, 0.7, 0.75)], "recipe behind cnn"),
        ([_row(0, 0.9, 0.3, learns=False), _row(1, 0.9, 0.8)], "broken: cnn did not learn"),  # never "ahead"
    ],
)
def test_the_summary_calls_a_row_broken_when_a_yardstick_did_not_learn(rows, verdict):
    [entry] = summarize(rows)
    assert entry["verdict"] == verdict
    assert entry["cnn"]["learns"] == all(r["cnn"]["learns"] for r in rows)


def test_a_recipe_run_without_yardsticks_is_not_called_ahead():
    rows = [{k: v for k, v in _row(seed, 0.9, 0.8).items() if k != "cnn"} for seed in (0, 1)]
    [entry] = summarize(rows)
    assert entry["verdict"] == "no yardstick in this run"


def test_the_summary_gives_the_time_to_the_cnns_accuracy_over_the_seeds_that_reached_it():
    rows = [_row(0, 0.9, 0.8), _row(1, 0.7, 0.75), _row(2, 0.8, 0.8)]
    for r, t in zip(rows, (10.0, None, 20.0), strict=True):
        r["recipe"]["seconds_to_cnn"], r["cnn"]["seconds_to_cnn"] = t, 5.0
    [entry] = summarize(rows)
    assert entry["recipe"]["seconds_to_cnn"] == 15.0 and entry["recipe"]["reached_cnn"] == "2/3"
    assert entry["cnn"]["seconds_to_cnn"] == 5.0 and entry["cnn"]["reached_cnn"] == "3/3"


def test_the_command_line_knows_every_dataset():
    assert DATASET_NAMES == tuple(DATASETS)



@pytest.mark.parametrize("name", ["sim", "geometry", "digits", "glyphs", "headway"])
def test_heldout_clips_are_apart_and_sizes_are_prefixes(name):
    small, large = make_frames(name, frames=40), make_frames(name, frames=80)
    held = make_frames(name, frames=40, heldout=True)
    assert not set(held.clips) & set(large.clips)
    assert small.images == large.images[: len(small)]  # the smaller pool: the larger's first clips
    cut = large.take(40)
    assert len(cut) >= 40 and (len(cut) == len(large) or large.clips[len(cut)] != cut.clips[-1])


def test_geometry_labels_follow_position_so_a_flip_changes_them():
    frames = make_frames("geometry", frames=64)
    checked = 0
    for data, label in zip(frames.images, frames.labels, strict=True):
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        x, flipped_x = shape_centre_x(rgb), shape_centre_x(np.ascontiguousarray(rgb[:, ::-1]))
        if abs(x - GEOMETRY_SIZE / 2) < 2:  # on the middle line the pixel centroid may round over
            continue
        side = GEOMETRY_CLASSES[label].split("_")[0]
        assert side == ("left" if x < GEOMETRY_SIZE / 2 else "right")
        flipped_side = "left" if flipped_x < GEOMETRY_SIZE / 2 else "right"
        assert flipped_side != side  # the flipped frame belongs to the other class
        checked += 1
    assert checked >= 48


def test_sim96_is_imbalanced_as_asked():
    frames = make_frames("sim96", frames=400)
    shares = {frames.classes[k]: n / len(frames) for k, n in Counter(frames.labels).items()}
    for cls, share in SIM96_SHARES.items():
        assert shares[cls] == pytest.approx(share, abs=0.02)


def test_glyphs_has_many_classes_all_present_and_balanced():
    frames = make_frames("glyphs", frames=600)
    assert len(frames.classes) >= 20 and len(set(frames.classes)) == len(frames.classes)
    counts = Counter(frames.labels)
    assert sorted(counts) == list(range(len(frames.classes)))  # every class in the first 600
    mean = len(frames) / len(frames.classes)
    assert 0.75 * mean <= min(counts.values()) and max(counts.values()) <= 1.25 * mean
    by_clip: dict[str, list[int]] = {}
    for clip, label in zip(frames.clips, frames.labels, strict=True):
        by_clip.setdefault(clip, []).append(label)
    assert all(len(set(labels)) == 1 and len(labels) >= 3 for labels in by_clip.values())
    first = frames.clips[0]
    views = [img for img, clip in zip(frames.images, frames.clips, strict=True) if clip == first]
    assert len(set(views)) == len(views)  # the views of a glyph differ (jitter, noise)


def test_headway_label_is_the_lead_vehicles_distance_and_row():
    near, mid, far, none = (HEADWAY_CLASSES.index(c) for c in ("near", "mid", "far", "none"))
    assert [headway_label(d) for d in (5.0, 12.0, 25.0, 50.0, float("inf"))] == [
        near, mid, far, none, none
    ]  # fmt: skip
    assert headway_row(5.0) > headway_row(12.0) > headway_row(25.0)  # nearer: lower in the frame
    for d in (5.0, 8.5, 9.5, 16.0, 18.0, 30.0, 40.0):
        assert headway_label_at_row(headway_row(d)) == headway_label(d)
    assert headway_label_at_row(10.0) == none  # above the horizon


def _lead_contact_row(with_lead: np.ndarray, without: np.ndarray) -> tuple[float, float]:
    """(row where the lead vehicle meets the road, its mean column) from the pixels that the lead
    vehicle changes; its shadow and anti-aliased edge reach about 1.6 px below its contact."""
    diff = np.abs(with_lead.astype(np.int16) - without.astype(np.int16)).max(axis=2)
    ys, xs = np.nonzero(diff > 12)
    return float(ys.max()) + 0.5 - 1.6, float(xs.mean()) + 0.5


def _shifted(rgb: np.ndarray, rows: int) -> np.ndarray:
    """`rgb` moved down by `rows` (up if negative), black where nothing moved in."""
    out = np.zeros_like(rgb)
    if rows >= 0:
        out[rows:] = rgb[: rgb.shape[0] - rows]
    else:
        out[:rows] = rgb[-rows:]
    return out


def test_headway_labels_follow_the_lead_vehicles_row_so_a_flip_keeps_them_a_shift_not():
    frames = make_frames("headway", frames=320)
    near = HEADWAY_CLASSES.index("near")
    boundaries = [headway_row(d) for d in HEADWAY_LIMITS.values()]
    widths: dict[str, list[float]] = {}
    checked = 0
    for k, clip in zip(range(40), headway_clips(0), strict=False):
        with_lead, distances = render_headway(clip)
        at = slice(8 * k, 8 * k + 8)  # the dataset's frames are these, labelled by the distance
        assert frames.images[at] == [encode_jpeg(f) for f in with_lead]
        assert frames.labels[at] == [headway_label(d) for d in distances]
        if clip.condition != "day" or clip.lead is None:  # night, rain, fog hide the road contact
            continue
        without, _ = render_headway(clip, lead=False)
        for a, b, d in zip(with_lead, without, distances, strict=True):
            label, (row, col) = headway_label(d), _lead_contact_row(a, b)
            # The pixels put the vehicle where its distance says, ahead in the ego lane.
            assert abs(row - headway_row(d)) < 2
            centre = a.shape[1] / 2
            assert abs(col - centre) < a.shape[1] / 6
            if min(abs(row - r) for r in boundaries) < 1.5:  # too close to a class boundary to tell
                continue
            assert headway_label_at_row(row) == label
            diff = np.abs(a.astype(np.int16) - b).max(axis=2) > 12
            cols = np.nonzero(diff.any(axis=0))[0]
            widths.setdefault(HEADWAY_CLASSES[label], []).append(float(cols[-1] - cols[0]))
            # Flipped left-right, the lead vehicle is still ahead and in the same row: same class.
            flipped_row, flipped_col = _lead_contact_row(a[:, ::-1], b[:, ::-1])
            assert flipped_row == row and abs(flipped_col - centre) < a.shape[1] / 6
            assert headway_label_at_row(flipped_row) == label
            # Shifted up or down, it meets the road in another row: another class.
            shift = -24 if label == near else 12
            shifted_row, _ = _lead_contact_row(_shifted(a, shift), _shifted(b, shift))
            assert shifted_row == pytest.approx(row + shift)
            assert headway_label_at_row(shifted_row) != label
            checked += 1
    assert checked >= 60
    mean = {name: np.mean(v) for name, v in widths.items()}
    assert mean["near"] > mean["mid"] > mean["far"]  # and the nearer, the bigger


def test_bench_train_step_times_every_head(tmp_path):
    out = tmp_path / "steps.json"
    result = CliRunner().invoke(main, ["bench", "train-step", "--sizes", "32", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["head"] for r in rows] == ["both", "spatial", "coord", "pool"]
    assert all(r["image_size"] == 32 and r["images_per_s"] > 0 for r in rows)


def test_bench_train_step_times_variants_and_the_script_cnn(tmp_path):
    out = tmp_path / "steps.json"
    args = ["bench", "train-step", "--sizes", "32", "--threads", "1", "--heads", "both", "--cnn",
            "--variant", "wide=width:24,stages:2", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r.get("variant"), r.get("model")) for r in data["rows"]] == [("default", None), ("wide", None),
                                                                          (None, "script_cnn")]  # fmt: skip
    assert data["config"]["variants"]["wide"] == {"width": 24, "stages": 2}
    bad = CliRunner().invoke(main, ["bench", "train-step", "--sizes", "32", "--variant", "x=wdth:24"])
    assert bad.exit_code != 0 and "wdth" in bad.output and "--variant" in bad.output
    bad = CliRunner().invoke(main, ["bench", "train-step", "--sizes", "32", "--variant", "width24"])
    assert bad.exit_code != 0 and "NAME=KEY:VALUE" in bad.output


def test_a_rerun_arm_replaces_the_base_arm_only_on_the_same_held_out_frames():
    base_rows = [{**_row(seed, 0.8, 0.7), "heldout_sha256": f"h{seed}", "resnet18": {"accuracy": 0.3, "macro_f1": 0.1,
                  "seconds": 5.0, "learns": False}} for seed in (0, 1)]  # fmt: skip
    base = {"config": {"sizes": [10]}, "rows": base_rows}
    rerun = {"rows": [{"dataset": "d", "size": 10, "seed": 0, "heldout_sha256": "h0",
                       "resnet18": {"accuracy": 0.75, "macro_f1": 0.7, "seconds": 9.0, "learns": True}},
                      {"dataset": "d", "seed": 1, "resnet18_heldout_accuracy": 0.65}]}  # a progress line  # fmt: skip
    merged = merge_rerun(base, [rerun], "resnet18")
    [entry] = merged["summary"]
    assert entry["resnet18"]["accuracy"] == pytest.approx(0.70) and entry["resnet18"]["learns"] is True
    assert entry["resnet18"]["seconds"] == 9.0 and entry["resnet18"]["seconds_seeds"] == 1  # one seed timed
    assert entry["verdict"] == "recipe ahead" and merged["rows"][1]["resnet18"]["from_progress_line"]
    assert base["rows"][0]["resnet18"]["accuracy"] == 0.3  # the base result is left as it was
    other = {"rows": [{**rerun["rows"][0], "heldout_sha256": "elsewhere"}]}
    with pytest.raises(ValueError, match="other held-out frames"):
        merge_rerun(base, [other], "resnet18")
    # a recipe-only rerun (other code or settings) replaces the recipe arm; both yardsticks stay, their deltas are redone
    again = {"rows": [{"dataset": "d", "size": 10, "seed": s, "heldout_sha256": f"h{s}",
                       "recipe": {"accuracy": 0.6, "macro_f1": 0.5, "seconds": 2.0}} for s in (0, 1)]}  # fmt: skip
    merged = merge_rerun(base, [again], "recipe")
    row = merged["rows"][0]
    assert row["recipe"]["accuracy"] == 0.6 and row["recipe"]["rerun"] and row["cnn"]["accuracy"] == 0.7
    assert row["delta"] == {"cnn": pytest.approx(-0.1), "resnet18": pytest.approx(0.3)}
    assert merged["summary"][0]["recipe"]["accuracy"] == pytest.approx(0.6)


def test_further_seeds_join_a_result_with_their_arms_and_an_arm_some_lack_counts_its_own(tmp_path):
    resnet = {"accuracy": 0.5, "macro_f1": 0.4, "seconds": 3.0, "learns": True}
    base_rows = [{**_row(s, 0.8, 0.82), "resnet18": resnet} for s in (0, 1, 2)]
    base = {"rows": base_rows, "summary": summarize(base_rows)}
    base["markdown"] = markdown(base["summary"]) + "\n\na note of an earlier merge"
    more = {"rows": [_row(3, 0.9, 0.8), _row(4, 0.9, 0.8)]}  # a run of two more seeds, without ResNet-18
    path, more_path, out = tmp_path / "base.json", tmp_path / "more.json", tmp_path / "five.json"
    path.write_text(json.dumps(base))
    more_path.write_text(json.dumps(more))
    result = CliRunner().invoke(main, ["bench", "recipe-merge", str(path), "--add", str(more_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    five = json.loads(out.read_text())
    [entry] = five["summary"]
    assert entry["seeds"] == [0, 1, 2, 3, 4] and entry["verdict"] == "recipe ahead"  # 0.84 against 0.812: was behind
    assert entry["recipe"]["accuracy"] == pytest.approx(0.84) and entry["cnn"]["accuracy"] == pytest.approx(0.812)
    assert entry["resnet18"]["accuracy"] == 0.5 and entry["resnet18"]["accuracy_seeds"] == 3  # over its own seeds
    assert "0.500 ± 0.000 (3 seeds)" in five["markdown"] and "a note of an earlier merge" in five["markdown"]
    assert "d 10 seed 3, d 10 seed 4" in five["markdown"] and five["added"]["files"] == [str(more_path)]
    assert summarize(base_rows)[0]["verdict"] == "recipe behind cnn"
    again = CliRunner().invoke(main, ["bench", "recipe-merge", str(out), "--add", str(more_path), "--out", str(out)])
    assert again.exit_code != 0 and "('d', 10, 3): already a row" in again.output  # a seed twice is refused
    bare = CliRunner().invoke(main, ["bench", "recipe-merge", str(path), "--out", str(out)])
    assert bare.exit_code != 0 and "nothing to merge" in bare.output


def test_recipe_compare_pairs_variants_with_the_base_seed_by_seed(tmp_path):
    def result(acc: list[float], seconds: float, sha: str = "h") -> dict:
        rows = [{"dataset": "d", "size": 10, "seed": s, "heldout_sha256": f"{sha}{s}",
                 "recipe": {"accuracy": a, "seconds": seconds}, "cnn": {"accuracy": 0.7, "seconds": 10.0}}
                for s, a in enumerate(acc)]  # fmt: skip
        return {"config": {"overrides": {}}, "rows": rows}

    files = {"long": result([0.8, 0.9, 0.7], 40.0), "short": result([0.82, 0.91, 0.69], 15.0),
             "elsewhere": result([0.8, 0.9, 0.7], 40.0, sha="x")}  # fmt: skip
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    out = tmp_path / "cmp.json"
    args = ["bench", "recipe-compare", f"long={tmp_path / 'long.json'}", f"short={tmp_path / 'short.json'}",
            "--base", "long", "--out", str(out)]  # fmt: skip
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    [row] = json.loads(out.read_text())["rows"]
    short = row["arms"]["short:recipe"]
    assert short["vs_base"] == pytest.approx(0.0067, abs=1e-4) and short["ahead_of_base"] == "2/3"
    assert short["seconds_over_cnn"] == 1.5 and row["arms"]["long:recipe"]["seconds_over_cnn"] == 4.0
    assert short["vs_cnn"] == pytest.approx(0.1067, abs=1e-4) and short["cnn_of"] == "this run"
    alone = result([0.6, 0.75, 0.72], 15.0)  # a recipe-only variant: the base run's CNN on the same frames
    for r in alone["rows"]:
        del r["cnn"]
    (tmp_path / "alone.json").write_text(json.dumps(alone))
    run = CliRunner().invoke(main, [*args[:4], f"alone={tmp_path / 'alone.json'}", *args[4:]])
    assert run.exit_code == 0, run.output
    [row] = json.loads(out.read_text())["rows"]
    solo = row["arms"]["alone:recipe"]
    assert solo["vs_cnn"] == pytest.approx(-0.01, abs=1e-4) and solo["ahead_of_cnn"] == "2/3"
    assert solo["cnn_of"] == "long's run" and solo["seconds_over_cnn"] is None
    bad = CliRunner().invoke(main, [*args[:4], f"elsewhere={tmp_path / 'elsewhere.json'}", *args[4:]])
    assert bad.exit_code != 0 and "other held-out frames" in bad.output
    assert CliRunner().invoke(main, [*args[:3], "nolabel", *args[4:]]).exit_code != 0


def test_recipe_compare_joins_a_label_s_files_and_scores_last_epochs(tmp_path):
    def result(dataset: str, acc: list[float], last: list[float] | None = None) -> dict:
        rows = [{"dataset": dataset, "size": 10, "seed": s, "heldout_sha256": f"{dataset}{s}",
                 "recipe": {"accuracy": a, "seconds": 20.0, **({"curve": [[1.0, 0.5], [2.0, last[s]]]} if last else {})},
                 "cnn": {"accuracy": 0.7, "seconds": 10.0}} for s, a in enumerate(acc)]  # fmt: skip
        return {"config": {"overrides": {}}, "rows": [*rows, {"dataset": dataset, "seed": 9, "progress": True}]}

    files = {"base_a": result("a", [0.8, 0.9], last=[0.84, 0.86]), "base_b": result("b", [0.6, 0.7], last=[0.6, 0.8]),
             "var_a": result("a", [0.85, 0.85], last=[0.85, 0.85]), "var_b": result("b", [0.65, 0.75], last=[0.65, 0.75]),
             "nocurve": result("b", [0.65, 0.75])}  # fmt: skip
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    out = tmp_path / "cmp.json"

    def compare(*variants: str, last: bool = False):
        args = ["bench", "recipe-compare", *(f"{v.split(':')[0]}={tmp_path / v.split(':')[1]}.json" for v in variants),
                "--base", "base", "--out", str(out), *(["--last-epoch"] if last else [])]  # fmt: skip
        return CliRunner().invoke(main, args)

    run = compare("base:base_a", "base:base_b", "new:var_a", "new:var_b")
    assert run.exit_code == 0, run.output
    rows = {r["dataset"]: r for r in json.loads(out.read_text())["rows"]}
    assert sorted(rows) == ["a", "b"]  # both files of each label, the progress lines left out
    assert rows["a"]["arms"]["new:recipe"]["vs_base"] == pytest.approx(0.0) and rows["a"]["arms"]["new:recipe"]["ahead_of_base"] == "1/2"
    assert rows["a"]["arms"]["new:recipe"]["seconds_over_cnn"] == 2.0
    for name in ("var_a", "var_b"):  # merged in from a recipe-only rerun: not timed beside this CNN, so no ratio
        for r in files[name]["rows"]:
            if "recipe" in r:
                r["recipe"]["rerun"] = True
        (tmp_path / f"{name}.json").write_text(json.dumps(files[name]))
    run = compare("base:base_a", "base:base_b", "new:var_a", "new:var_b", last=True)
    assert run.exit_code == 0, run.output
    cmp = json.loads(out.read_text())
    rows = {r["dataset"]: r for r in cmp["rows"]}
    assert rows["a"]["arms"]["new:recipe"]["seconds_over_cnn"] is None
    assert cmp["epoch"] == "last" and rows["a"]["arms"]["base:recipe"]["accuracy"] == pytest.approx(0.85)
    assert rows["b"]["arms"]["new:recipe"]["vs_base"] == pytest.approx(0.0) and rows["b"]["arms"]["new:recipe"]["ahead_of_base"] == "1/2"
    twice = compare("base:base_a", "base:base_a", "new:var_a")
    assert twice.exit_code != 0 and "already has a 10 seed 0" in twice.output
    blind = compare("base:base_a", "base:base_b", "new:nocurve", last=True)
    assert blind.exit_code != 0 and "no curve" in blind.output
