"""Benchmark: does the data engine buy the rare slice with fewer human labels than random sampling?

Flywheels from the same seeds, each in its own home (store + MLflow), with the same human-label
budget and the same recorded clips and upload budget per iteration, all driven through the production stage functions
(flywheel/ingest/, flywheel/stages.py) and the simulated labeling team (flywheel/sim/annotator.py),
so the benchmark measures the pipeline a user runs. An arm is a set of the engine's parts:
  shadow:   the deployed model picks the fleet's uploads (low_confidence triggers)
  novelty:  the deployed model picks the fleet's uploads by novelty against its training data (novel triggers)
  select:   active selection (hybrid) of the frames people label; without it, uniformly random frames
  typical:  active selection by typicality (TypiClust, `engine.strategy: typical`) instead of hybrid
  auto:     the deployed model labels the frames it is sure of; without it, people label everything
  campaign: a mining campaign for the rare slice (`flywheel campaign start --slice condition=fog`),
            started once the dataset holds a labeled frame of it: the fleet uploads clips like them
  scarce:   the engine mines for the rarest condition while it is below 20 % of the labeled frames, by
            itself (`engine.scarce_share: 0.2`), its query renewed with each dataset version; nobody names fog
  synth:    synthetic frames of the scarce conditions (fog, night, rain below SYNTH_SHARE of a batch's labeled
            train frames) made from its frames of the common one (`engine.synthesize_share`, flywheel/data/synth.py)
`engine` (the default engine) is shadow + select + auto + synth, `engine_without_synth` the same without synth, `engine_novelty` novelty + select + auto, `engine_typical` novelty +
typical + auto, `mining` is campaign + select + auto, `engine_scarce` scarce + select + auto, `random` none (random
uploads, random frames, nothing deployed); the ablation arms have one part each. An arm with any part deploys every model it trains (a gate that passes every challenger),
so that model drives the next iteration. Each iteration: simulate -> ingest -> labels (queue) ->
annotator answers -> labels again -> augmented -> dataset version -> train -> score on one fixed
test set shared by every arm and seed (equal frames per condition, rendered apart from any fleet).

The scale is the demo's (96x72 renders, 64 px, the default model, the demo's 300-step training
budget) with fewer human labels per iteration, so that the random arm learns the task and the
comparison means something; the condition mix is held fixed (no drift) with fog rare. `world`: what
the fleet sees, the road simulator or a world of another character (benchmarks/worlds.py: `digits`,
32x32 renders at 32 px, its test set drawn from digits the fleet never sees).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from benchmarks.recipe import interval
from benchmarks.worlds import world_for
from flywheel import ingest, layout, sim, stages
from flywheel.config import CONDITIONS, EngineSettings, Settings, set_dotted
from flywheel.engine import campaigns
from flywheel.engine.shadow import fleet_filter
from flywheel.labeling.quality import auto_accuracy_vs_truth
from flywheel.model import load_weights
from flywheel.model_input import frames_to_input
from flywheel.predict import predict
from flywheel.sim.annotator import answer_queue
from flywheel.store import store_for
from flywheel.tracking import CHALLENGER, tracker_for

# A gate that passes every challenger (no gain needed, no slice judged): the benchmark measures the
# data each arm brings, not the gate's choices. There is no standing force in the settings any more. The margin is
# below any difference of two scores in [0, 1]: the gain's interval must be above it, and on a few frames its lower
# end can be -1 itself (a road-world flywheel stopped on exactly that with a margin of -1).
EVERY_MODEL_PROMOTED = {"floor": 0.0, "margin": -2.0, "min_slice_frames": 10**9, "critical_slices": []}

RARE = "fog"
MIX = {"day": 0.70, "night": 0.13, "rain": 0.12, "fog": 0.05}
PARTS = ("shadow", "novelty", "select", "typical", "auto", "campaign", "scarce", "synth")
SCARCE_SHARE = 0.2  # the scarce part: mine for the rarest condition while below this share of the labeled frames
# the synth part: synthesize each scarce condition up to this share of a batch's train frames (the flywheel's default)
SYNTH_SHARE = EngineSettings.model_fields["synthesize_share"].default
SYNTH_SHARE_UNRECORDED = 0.2  # the share of results written before their config recorded `synth_share`
ARMS: dict[str, tuple[str, ...]] = {
    "random": (),
    "engine": ("shadow", "select", "auto", "synth"),
    "engine_without_synth": ("shadow", "select", "auto"),
    "engine_novelty": ("novelty", "select", "auto"),
    "engine_typical": ("novelty", "typical", "auto"),
    "mining": ("campaign", "select", "auto"),
    "engine_scarce": ("scarce", "select", "auto"),
    "synth_only": ("synth",),
    "scarce_only": ("scarce",),
    "shadow_only": ("shadow",),
    "novelty_only": ("novelty",),
    "typical_only": ("typical",),
    "selection_only": ("select",),
    "auto_labels_only": ("auto",),
    "campaign_only": ("campaign",),
}
MAIN_ARMS = ("random", "engine")
ABLATION_ARMS = ("shadow_only", "novelty_only", "selection_only", "typical_only", "auto_labels_only", "campaign_only",
                 "scarce_only", "synth_only")
# the engine should reach the random arm's final rare-slice accuracy with at most this share of its labels
# (and never be significantly below it at any iteration); 0.5 would be the stretch
GOAL = 0.6
# --quick: a smoke test of the whole path in about a minute (the models do not learn at this size)
# (40 % of its few clips in the test split, which evaluation and deploy need)
QUICK = dict(seeds=(0,), iterations=2, clips_per_iteration=8, label_budget=32, steps=10, image_size=32,
             test_per_condition=8, render=(48, 36), split={"train": 0.5, "val": 0.1, "test": 0.4})  # fmt: skip
SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
# The fleet records this many clips per clip it may upload, the same recordings in every arm (`sim.simulate(record=)`):
# hard brakes and the shadow filter's picks share one upload budget, so an arm with a filter does not record more
# clips, and with them upload more hard brakes, than the random arm (21-35 of 48 uploads against 9-18 before).
RECORDED_PER_UPLOAD = 2
# per world, unless given: the model input side, the renders' (width, height), the clips uploaded and the
# frames people label per iteration (ten classes of digits need more labels than six road classes before the
# random arm learns: at 100 a turn it was at chance until 300 labels), and the frames per clip of the test
# set (a digit clip is one digit: one frame each spreads the test set over as many digits as frames)
WORLD_SCALE = {"road": {"image_size": 64, "render": (96, 72), "clips_per_iteration": 48, "label_budget": 100,
                        "test_per_clip": None},
               "digits": {"image_size": 32, "render": (32, 32), "clips_per_iteration": 96, "label_budget": 200,
                          "test_per_clip": 1}}  # fmt: skip


def comparable(config: dict) -> dict:
    """What a flywheel's rows depend on besides its arm and seed, from a result's (or partial's) config with the
    world's defaults filled in: two runs that agree on it give the same rows for the same (arm, seed)."""
    world = config.get("world", "road")
    scale = WORLD_SCALE.get(world, {})
    clips = config.get("clips_per_iteration") or scale.get("clips_per_iteration")
    return {"world": world, "overrides": config.get("overrides") or {}, "iterations": config.get("iterations"),
            "steps": config.get("steps"), "clips_per_iteration": clips,
            "recorded_per_iteration": config.get("recorded_per_iteration") or (clips and RECORDED_PER_UPLOAD * clips),
            "label_budget": config.get("label_budget") or scale.get("label_budget"),
            "image_size": config.get("image_size") or scale.get("image_size"),
            "render": list(config.get("render") or scale.get("render") or ()), "split": config.get("split") or SPLIT,
            "test_per_condition": config.get("test_per_condition") or 150}  # fmt: skip


@contextmanager
def _home(root: Path):
    """FLYWHEEL_HOME = `root` while settings are made: each arm's store and MLflow live under its own root."""
    old = os.environ.get("FLYWHEEL_HOME")
    os.environ["FLYWHEEL_HOME"] = str(root)
    try:
        yield
    finally:
        os.environ.pop("FLYWHEEL_HOME") if old is None else os.environ.__setitem__("FLYWHEEL_HOME", old)


def bench_settings(root: Path, *, parts: tuple[str, ...] = (), image_size: int = 64, steps: int = 300,
                   label_budget: int = 100, seed: int = 0, render: tuple[int, int] = (96, 72),
                   split: dict[str, float] = SPLIT, world: str = "road", overrides: dict | None = None,
                   synth_share: float = SYNTH_SHARE) -> Settings:  # fmt: skip
    """One arm's settings, its home at `root`; every model passes the gate (the comparison is about data);
    `overrides`: dotted keys set last (`bench engine --set`), the same in every arm; `synth_share`: the
    synth part's `engine.synthesize_share` (arms without that part make no synthetic frames)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown engine part(s) {sorted(unknown)}; known: {PARTS}")
    if {"shadow", "novelty"} <= set(parts):
        raise ValueError("an arm's shadow mode flags clips by confidence (shadow) or by novelty, not both")
    if {"select", "typical"} <= set(parts):
        raise ValueError("an arm selects frames by hybrid (select) or typical, not both")
    with _home(root):
        data = {
            "classes": list(world_for(world).classes),
            "image_size": image_size,
            "sim": {"width": render[0], "height": render[1], "frames_per_clip": 8, "vehicles": 4,
                    "conditions_start": MIX, "conditions_end": MIX, "drift_clips": 1},
            "train": {"steps": steps, "device": "cpu", "seed": seed},
            "tune": {"baseline_epochs": 0},
            "ingest": {"workers": 1},
            # without a shadow part no clip is low_confidence (a threshold of 0); campaigns still match
            "engine": {"enabled": True, "label_budget": label_budget, "seed": seed,
                       "shadow_trigger": "novelty" if "novelty" in parts else "confidence",
                       "shadow_threshold": 0.6 if "shadow" in parts else 0.0,
                       "strategy": "typical" if "typical" in parts else "hybrid" if "select" in parts else "random",
                       "auto_labels": "auto" in parts,
                       "scarce_share": SCARCE_SHARE if "scarce" in parts else None,
                       "synthesize_share": synth_share if "synth" in parts else None},
            "gate": EVERY_MODEL_PROMOTED,
            "deploy": {"int8": False},
            # scored on the benchmark's own test set: no clips moved from train to the evaluation split
            "eval": {"per_slice_frames": 0},
            "dataset": {"golden_size": 0, "split": split},
        }  # fmt: skip
        for dotted, value in (overrides or {}).items():
            set_dotted(data, dotted, value)
        return Settings.model_validate(data)


def test_set(settings: Settings, *, per_condition: int, seed: int = 7919,
             world: str = "road", per_clip: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Equal frames per condition, rendered apart from any fleet (from the world's held-out share where it
    has one), in clips of `per_clip` frames (None: the fleet's): images (N, 3, S, S), labels, conditions."""
    held = world_for(world, heldout=True)
    images, labels, conds = [], [], []
    for k, cond in enumerate(CONDITIONS):
        rng = np.random.default_rng([seed, k])
        f, names = sim.render_frames(rng, per_condition, cond, settings, per_clip=per_clip or settings.sim.frames_per_clip,
                                     jpeg_quality=sim.EXTRAS.jpeg_quality, world=held)  # fmt: skip
        images.append(frames_to_input(f, settings.image_size))
        labels += [settings.classes.index(n) for n in names]
        conds += [cond] * per_condition
    return np.concatenate(images), np.array(labels), np.array(conds)


def _ingest(store, settings: Settings) -> str:
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10**6)
    if plan is None:
        raise ValueError("the simulator uploaded nothing to ingest")
    ingest.commit_batch(store, plan)
    ingest.validate_batch(store, plan.batch_id, settings)
    ingest.write_frames(store, plan.batch_id, settings)
    return plan.batch_id


def run_arm(arm: str, workdir: Path, *, iterations: int, clips_per_iteration: int, seed: int, test: tuple,
            recorded_per_iteration: int | None = None, progress=None, **settings_kw) -> list[dict]:  # fmt: skip
    """One flywheel; per iteration: uploads, labels spent, train frames, accuracy overall and on fog.
    `recorded_per_iteration`: the fleet records that many clips and uploads `clips_per_iteration` of them;
    None: it records until a filter has flagged enough (the simulator's own mode)."""
    parts = ARMS[arm]
    settings = bench_settings(workdir / f"{arm}-{seed}", parts=parts, seed=seed, **settings_kw)
    world = world_for(settings_kw.get("world", "road"))
    store, tracker = store_for(settings), tracker_for(settings)
    test_x, test_y, test_c = test
    rows, spent = [], 0
    for it in range(1, iterations + 1):
        t0 = time.perf_counter()
        recorded0 = sim.read_state(store)["recorded"]
        shadow = fleet_filter(store, settings) if {"shadow", "novelty", "campaign", "scarce"} & set(parts) else None
        sim.simulate(store, settings, clips=clips_per_iteration, seed=seed, upload_filter=shadow, world=world,
                     record=recorded_per_iteration)  # fmt: skip
        batch_id = _ingest(store, settings)
        queued = stages.label_batch(store, settings, batch_id)["queued"]
        answered = answer_queue(store, classes=settings.classes, seed=seed)["answered"]
        stats = stages.label_batch(store, settings, batch_id)  # again, with the answers
        synthesized = stages.augment_batch(store, settings, batch_id)["synthesized"]
        manifest, _ = stages.build_dataset_version(store, settings)
        stages.train_challenger(store, settings, tracker, device="cpu")
        if parts:  # the new model decides the next uploads, labels or auto labels
            stages.evaluate_challenger(store, settings, tracker, device="cpu")
            stages.deploy_challenger(store, settings, tracker)
        if "campaign" in parts and not campaigns.list_campaigns(store):  # the team mines for the rare slice
            try:
                campaigns.create(store, settings, f"more-{RARE}", slice=f"condition={RARE}", match_share=0.02, seed=seed)
            except ValueError:  # no labeled frame of it yet: next iteration
                pass
        mined = campaigns.mine_scarce(store, settings) if "scarce" in parts else {}
        model, _ = load_weights(tracker.weights(tracker.alias(CHALLENGER)))
        probs = predict(model, test_x).probs
        pred = probs.argmax(axis=1)
        rare = test_c == RARE
        spent += answered
        frames = store.read_parquet(layout.frames_key(batch_id), columns=["frame_id", "trigger", "condition",
                                                                          "ground_truth"])  # fmt: skip
        labels = store.read_parquet(layout.labels_key(batch_id))
        per_clip = settings.sim.frames_per_clip
        train = [s for s in manifest["shards"] if s["split"] == "train"]
        rows.append({
            "arm": arm, "seed": seed, "iteration": it, "recorded": sim.read_state(store)["recorded"] - recorded0,
            "uploaded": clips_per_iteration, "triggers": dict(Counter(frames.column("trigger").to_pylist()[::per_clip])),
            "uploaded_fog_clips": frames.column("condition").to_pylist().count(RARE) // per_clip,
            "queued": queued, "human_labels": answered, "human_labels_total": spent,
            "auto_labels": stats["auto"], "auto_label_accuracy": auto_accuracy_vs_truth(labels, frames, settings.classes)["accuracy"],
            "train_frames": sum(s["rows"] for s in train),
            "train_fog_frames": sum(s["counts"]["condition"].get(RARE, 0) for s in train),  # with augmented copies
            "synthesized": synthesized,  # synthetic frames this batch added per condition (the synth part)
            "accuracy": float((pred == test_y).mean()), "fog_accuracy": float((pred[rare] == test_y[rare]).mean()),
            # what shadow mode sees: the model's mean top probability per condition (sure of fog, it uploads no fog)
            "confidence_by_condition": {c: round(float(probs[test_c == c].max(axis=1).mean()), 3) for c in CONDITIONS},
            "campaigns_started": mined.get("started", []), "campaigns_stopped": mined.get("stopped", []),
            "seconds": round(time.perf_counter() - t0, 1),
        })  # fmt: skip
        if progress:
            r = rows[-1]
            progress(f"seed {seed} {arm} iteration {it}: accuracy {r['accuracy']:.3f}, {RARE} {r['fog_accuracy']:.3f} "
                     f"after {spent} human labels, {r['auto_labels']} auto; {r['train_frames']} train rows "
                     f"({r['train_fog_frames']} {RARE}); {r['seconds']:.0f} s")  # fmt: skip
    return rows


def _arm_task(arm: str, workdir: Path, seed: int, echo: bool, kw: dict) -> list[dict]:
    """One flywheel in a worker process, with one torch thread; progress lines to stderr."""
    torch.set_num_threads(1)
    return run_arm(arm, workdir, seed=seed, progress=(lambda line: print(line, file=sys.stderr, flush=True)) if echo else None, **kw)


def curve(runs: list[list[dict]], key: str) -> dict:
    """Mean, min, max and 95 % t-interval half-width of `key` over seeds at each iteration, against the
    human labels spent (their mean)."""
    values = np.array([[r[key] for r in rows] for rows in runs], dtype=np.float64)  # (seeds, iterations)
    labels = np.array([[r["human_labels_total"] for r in rows] for rows in runs], dtype=np.float64)
    return {"labels": labels.mean(axis=0).round(1).tolist(), "mean": values.mean(axis=0).round(4).tolist(),
            "min": values.min(axis=0).round(4).tolist(), "max": values.max(axis=0).round(4).tolist(),
            "half": [round(interval(col.tolist())[1], 4) for col in values.T]}  # fmt: skip


def paired(arm_runs: list[list[dict]], base_runs: list[list[dict]], key: str) -> list[dict]:
    """Per iteration, the arm minus a base arm (random, or the whole engine) on the same seed (the same
    first uploads and label seeds): mean, 95 % t-interval half-width over seeds, and `below` / `above` when
    the interval excludes 0 (significantly below / above the base at that iteration)."""
    out = []
    for it, rows in enumerate(zip(*arm_runs, strict=True)):
        diffs = [r[key] - base_runs[i][it][key] for i, r in enumerate(rows)]
        mean, half = interval(diffs)
        out.append({"iteration": it + 1, "mean": round(mean, 4), "half": round(half, 4), "seeds": len(diffs),
                    "below": len(diffs) > 1 and mean + half < 0, "above": len(diffs) > 1 and mean - half > 0})  # fmt: skip
    return out


def labels_to_reach(labels: list[float], values: list[float], target: float) -> float | None:
    """Human labels spent when the curve first reaches `target` (None: never), read at the iterations
    themselves (no interpolation between them: a conservative figure)."""
    for n, v in zip(labels, values, strict=True):
        if v >= target - 1e-9:
            return n
    return None


def label_ratio(engine: dict, random: dict) -> dict:
    """Labels the engine needs to reach the random arm's final rare-slice accuracy ÷ the random arm's labels."""
    target, budget = random["mean"][-1], random["labels"][-1]
    needed = labels_to_reach(engine["labels"], engine["mean"], target)
    return {"target": target, "random_labels": budget, "engine_labels": needed,
            "ratio": round(needed / budget, 3) if needed is not None and budget else None}  # fmt: skip


def bench_engine(workdir: str | Path, *, arms: tuple[str, ...] = MAIN_ARMS, seeds: tuple[int, ...] = (0, 1, 2),
                 iterations: int = 5, clips_per_iteration: int | None = None, recorded_per_iteration: int | None = None,
                 label_budget: int | None = None, steps: int = 300,
                 image_size: int | None = None, test_per_condition: int = 150, render: tuple[int, int] | None = None,
                 split: dict[str, float] = SPLIT, world: str = "road", overrides: dict | None = None, jobs: int = 1,
                 synth_share: float = SYNTH_SHARE,
                 progress=None, on_done: Callable[[str, int, list[dict]], None] | None = None,
                 finished: dict[str, dict[int, list[dict]]] | None = None) -> dict:  # fmt: skip
    """The arms over the seeds; per-iteration rows, mean curves, paired differences from the random arm,
    and the label ratio against the goal. `jobs` > 1: (seed, arm) flywheels in that many processes of
    one torch thread each (on a small machine faster than one process of several threads). `on_done(arm,
    seed, rows)`: each flywheel's rows as soon as it has finished. `finished[arm][seed]`: rows of flywheels an
    earlier run of the same command finished (its NAME.partial.json), not run again (a flywheel is
    deterministic in its seed and arm)."""
    unknown = set(arms) - set(ARMS)
    if unknown or "random" not in arms:
        raise ValueError(f"arms must include 'random' and come from {list(ARMS)}; got {list(arms)}")
    arms = ("random", *(a for a in dict.fromkeys(arms) if a != "random"))  # the baseline first
    if world not in WORLD_SCALE:
        raise ValueError(f"unknown world {world!r}; known: {list(WORLD_SCALE)}")
    image_size = image_size or WORLD_SCALE[world]["image_size"]
    clips_per_iteration = clips_per_iteration or WORLD_SCALE[world]["clips_per_iteration"]
    recorded_per_iteration = recorded_per_iteration or RECORDED_PER_UPLOAD * clips_per_iteration
    label_budget = label_budget or WORLD_SCALE[world]["label_budget"]
    render = tuple(render or WORLD_SCALE[world]["render"])
    workdir = Path(workdir)
    t0 = time.perf_counter()
    settings_kw = dict(image_size=image_size, steps=steps, label_budget=label_budget, render=render, split=split,
                       world=world, overrides=dict(overrides or {}), synth_share=synth_share)  # fmt: skip
    test = test_set(bench_settings(workdir / "test", **settings_kw), per_condition=test_per_condition, world=world,
                    per_clip=WORLD_SCALE[world]["test_per_clip"])  # fmt: skip
    runs: dict[str, list[list[dict]]] = {arm: [] for arm in arms}
    finished = finished or {}
    tasks = [(seed, arm) for seed in seeds for arm in arms if seed not in finished.get(arm, {})]
    kw = dict(iterations=iterations, clips_per_iteration=clips_per_iteration, recorded_per_iteration=recorded_per_iteration,
              test=test, **settings_kw)  # fmt: skip
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_arm_task, arm, workdir, seed, bool(progress), kw): (seed, arm) for seed, arm in tasks}
            for f in as_completed(futures):
                if on_done is not None:
                    on_done(futures[f][1], futures[f][0], f.result())
            done = [f.result() for f in futures]  # in task order: seed by seed, the arms in order
    else:
        done = []
        for seed, arm in tasks:
            done.append(run_arm(arm, workdir, seed=seed, progress=progress, **kw))
            if on_done is not None:
                on_done(arm, seed, done[-1])
    ran = {(seed, arm): rows for (seed, arm), rows in zip(tasks, done, strict=True)}
    for seed in seeds:
        for arm in arms:
            runs[arm].append(ran[seed, arm] if (seed, arm) in ran else finished[arm][seed])
    curves = {arm: {"accuracy": curve(runs[arm], "accuracy"), "fog_accuracy": curve(runs[arm], "fog_accuracy")}
              for arm in arms}  # fmt: skip
    ratios = {arm: label_ratio(curves[arm]["fog_accuracy"], curves["random"]["fog_accuracy"])
              for arm in arms if arm != "random"}  # fmt: skip
    pairs = {arm: {key: paired(runs[arm], runs["random"], key) for key in ("fog_accuracy", "accuracy")}
             for arm in arms if arm != "random"}  # fmt: skip
    # each other arm against the whole engine, same seed: what the parts it leaves out (or adds) are worth
    with_engine = {arm: {key: paired(runs[arm], runs["engine"], key) for key in ("fog_accuracy", "accuracy")}
                   for arm in arms if "engine" in arms and arm not in ("random", "engine")}  # fmt: skip
    per_seed = {arm: [label_ratio(curve([runs[arm][i]], "fog_accuracy"), curve([runs["random"][i]], "fog_accuracy"))["ratio"]
                      for i in range(len(seeds))] for arm in arms if arm != "random"}  # fmt: skip
    return {
        "config": {"world": world, "overrides": dict(overrides or {}), "arms": list(arms), "seeds": list(seeds), "iterations": iterations,
                   "synth_share": synth_share,
                   "clips_per_iteration": clips_per_iteration, "recorded_per_iteration": recorded_per_iteration,
                   "label_budget": label_budget, "steps": steps,
                   "image_size": image_size, "render": list(render), "split": split, "test_per_condition": test_per_condition,
                   "mix": MIX, "rare": RARE, "torch_threads": 1 if jobs > 1 else torch.get_num_threads(), "jobs": jobs,
                   "resumed": {a: sorted(by_seed) for a, by_seed in finished.items() if by_seed}},
        "runs": runs, "curves": curves, "paired": pairs, "paired_with_engine": with_engine, "label_ratio": ratios, "label_ratio_per_seed": per_seed, "goal": GOAL,
        "chance": 1 / len(bench_settings(workdir / "test", **settings_kw).classes),
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def markdown(result: dict) -> str:
    """The curves as a table (mean over seeds, min to max in brackets) and the label ratio per arm."""
    rare = result["config"]["rare"]
    curves = result["curves"]
    lines = ["| arm | " + " | ".join(f"after {n:g} labels" for n in curves["random"]["accuracy"]["labels"]) + " |",
             "| --- |" + " --- |" * len(curves["random"]["accuracy"]["labels"])]  # fmt: skip
    for key, title in ((f"{rare}_accuracy", f"{rare} accuracy"), ("accuracy", "accuracy")):
        for arm, c in curves.items():
            cells = [f"{m:.3f} ({lo:.2f}–{hi:.2f})" for m, lo, hi in zip(c[key]["mean"], c[key]["min"], c[key]["max"], strict=True)]
            lines.append(f"| {arm}, {title} | " + " | ".join(cells) + " |")
    for field, base in (("paired", "random"), ("paired_with_engine", "engine")):
        if not result.get(field):
            continue
        lines += ["", f"| arm − {base}, same seed ({rare} accuracy; 95 % interval; * excludes 0) | "
                  + " | ".join(f"iteration {p['iteration']}" for p in next(iter(result[field].values()))["fog_accuracy"]) + " |",
                  "| --- |" + " --- |" * len(curves["random"]["accuracy"]["labels"])]  # fmt: skip
        for arm, p in result[field].items():
            cells = [f"{x['mean']:+.3f} ± {x['half']:.3f}{' *' if x['below'] or x['above'] else ''}" for x in p["fog_accuracy"]]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", f"| arm | labels to reach the random arm's final {rare} accuracy | ÷ random arm's labels | per seed | goal |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for arm, r in result["label_ratio"].items():
        per_seed = ", ".join("never" if x is None else f"{x:.2f}" for x in result["label_ratio_per_seed"][arm])
        ratio = "never reached" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {arm} | {r['engine_labels'] if r['engine_labels'] is not None else '–'} of {r['random_labels']:g} "
                     f"(target {r['target']:.3f}) | {ratio} | {per_seed} | ≤ {result['goal']} |")  # fmt: skip
    return "\n".join(lines)
