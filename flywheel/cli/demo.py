"""`flywheel demo`: the loop end to end on the embedded default, with a simulated fleet and a
simulated labeling team that answers the queue from outside, as people would."""

from __future__ import annotations

import json

import click

from flywheel.cli.base import DEMO_BUDGET, DEMO_GATE, RUN_LOGS, Ctx, cli_run_tags, command, main
from flywheel.cli.driver import execute, format_summary, run_iteration
from flywheel.config import IMAGE_SIZE, GateSettings, flywheel_home

# The detection demo: the detector's input side (a multiple of its stride, 8) at the simulator's width, where
# the config leaves image_size at its default.
DETECTION_DEMO = {"task": "detection", "image_size": 96}


def answer_and_relabel(obj: Ctx) -> list[str]:
    """The simulated labeling team answers the queue from outside, through labeling/ files, as people
    would; each answered batch that no dataset version holds yet gets its `labels` and `augmented`
    materialized again, so the answers count. Returns those batch ids."""
    import dagster as dg

    from flywheel.data.dataset import waiting_batches
    from flywheel.sim.annotator import answer_queue

    s, st = obj.settings, obj.store()
    answered = answer_queue(st, classes=s.classes, error_rate=s.sim.annotator_error_rate, task=s.task,
                            delay_batches=s.sim.annotator_delay_batches, seed=s.engine.seed)["answered_batches"]  # fmt: skip
    _, waiting = waiting_batches(st, s.dataset.name)
    relabel = [b for b in answered if b in waiting]
    instance, job = obj.instance(), obj.definitions().resolve_job_def("ingest_batch")
    for batch_id in relabel:
        res = execute(
            job,
            instance=instance, partition_key=batch_id, asset_selection=[dg.AssetKey("labels"), dg.AssetKey("augmented")],
            tags={"flywheel/trigger": "labels-answered", **cli_run_tags()}, run_config=RUN_LOGS,
        )  # fmt: skip
        if not res.success:
            raise click.ClickException(f"relabeling batch {batch_id} failed; see `{command('ui')}` for run {res.run_id}")
    return relabel



@main.command()
@click.option("--iterations", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--clips", type=click.IntRange(min=1), default=250, show_default=True, help="Clips the fleet uploads per iteration.")
@click.option("--label-budget", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Frames per fleet batch the (simulated) annotators label, with the engine on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--engine/--no-engine", default=True, show_default=True,
              help="Shadow-mode uploads, auto-labels and the human queue (answered by a simulated annotator); "
                   "--no-engine labels every frame from the clips' ground truth.")  # fmt: skip
@click.option("--full-recipe", is_flag=True,
              help="Train with the recipe's defaults instead of the demo's lighter budget ("
                   + ", ".join(f"{k}={v}" for k, v in DEMO_BUDGET.items()) + "), which keeps the demo to "
                   "minutes on a laptop's CPU.")  # fmt: skip
@click.option("--task", type=click.Choice(["classification", "detection"]), default="classification", show_default=True,
              help="detection: the loop on the simulator's boxes, a CenterNet detector judged by mAP@.5 (image_size "
                   f"{DETECTION_DEMO['image_size']} unless the config sets one; the demo's gate has no critical slices).")  # fmt: skip
@click.pass_obj
def demo(obj: Ctx, iterations: int, clips: int, label_budget: int, seed: int, engine: bool, full_recipe: bool, task: str):
    """Turn the whole loop a few times while the fleet's conditions drift, and plot the result.

    \b
    Example: FLYWHEEL_HOME=/tmp/fw flywheel demo --iterations 2 --clips 100
    """
    from flywheel import plots
    from flywheel.engine.shadow import fleet_filter
    from flywheel.ingest import pending_clips
    from flywheel.progress import shown

    home = flywheel_home()
    if (home / "batches").exists() or pending_clips(obj.store()):
        click.echo(f"note: {home} already holds flywheel data; the demo goes on from it "
                   "(set FLYWHEEL_HOME to an empty folder for a fresh start)")  # fmt: skip
    # Conditions drift from the start mix to the end mix over the demo's uploads.
    obj = obj.with_overrides(**{"sim.drift_clips": iterations * clips})
    if not full_recipe:
        obj = obj.with_overrides(**DEMO_BUDGET)
    if obj.settings.gate == GateSettings():  # the config leaves the gate alone: one sized to the demo's frames
        obj = obj.with_overrides(**DEMO_GATE)
        if task == "detection":  # a few hundred test frames: no condition or class could be shown non-inferior
            obj = obj.with_overrides(**{"gate.critical_slices": []})
    if task == "detection":
        keep = {"image_size"} if obj.settings.image_size != IMAGE_SIZE else set()
        obj = obj.with_overrides(**{k: v for k, v in DETECTION_DEMO.items() if k not in keep})
    if engine:
        obj = obj.with_overrides(**{"engine.enabled": True, "engine.label_budget": label_budget})
    from flywheel.sim import simulate as run_sim

    click.echo(f"flywheel home: {home}")
    t = obj.settings.train
    budget = (f"{t.epochs} epochs" if t.epochs else f"{t.steps} steps, at least {t.min_passes} passes") + (
        ", then the refit on train + val" if t.refit else "")
    check = f"yardstick check {obj.settings.tune.baseline_epochs} epochs" if obj.settings.tune.baseline_epochs else "no yardstick check"
    light = "" if full_recipe else " (the demo's budget; --full-recipe for the defaults)"
    if task == "detection":  # the detector's own budget (detection.steps): the demo's lighter one is the classifier's
        d = obj.settings.detection
        budget = f"a CenterNet detector, {d.steps} steps of {d.batch_size} frames"
        check, light = f"yardstick detector {d.yardstick_steps} steps" if d.yardstick_steps else "no yardstick check", ""
    click.echo(f"training: {budget} per challenger, {check}{light}")
    g = obj.settings.gate
    click.echo(f"gate: every slice of >= {g.min_slice_frames} frames shown non-inferior at -{g.slice_tolerance}"
               + (" (the demo's gate, for its small evaluation set; set gate: in your config for another)"
                  if g.slice_tolerance == DEMO_GATE["gate.slice_tolerance"] else "")
               + ("; critical slices: " + (", ".join(g.critical_slices) or "none")))  # fmt: skip
    rows, spent = [], 0
    for i in range(1, iterations + 1):
        shadow = fleet_filter(obj.store(), obj.settings)
        how = "shadow mode picks low_confidence clips" if shadow else "random uploads"
        click.echo(f"\n== iteration {i}/{iterations}: the fleet records {clips} clips ({how})")
        keys = run_sim(obj.store(), obj.settings, clips=clips, seed=seed, upload_filter=shadow, progress=True)
        with shown():  # clips read and evaluation passes, as bars on this terminal
            summary = run_iteration(obj, annotate=engine)
        summary["uploaded"], summary["labels_spent"] = len(keys), summary["human_labels"] - spent
        spent = summary["human_labels"]
        rows.append({"iteration": i, **summary})
        click.echo(f"uploaded {len(keys)} clips; human labels spent {summary['labels_spent']}")
        click.echo(format_summary(summary))
    metric = rows[-1]["metric"]
    png = home / "demo.png"
    png.write_bytes(plots.demo_png(rows))
    (home / "demo.json").write_text(json.dumps(rows, indent=2, default=str))
    deployed = sum(r["gate_passed"] for r in rows)
    click.echo(f"\n{iterations} iterations, {deployed} deployed; champion now {rows[-1]['deployed'] or 'none'}")
    fixed_n = next((r["fixed_frames"] for r in rows if r["fixed_frames"]), None)
    curve = " -> ".join("-" if r["fixed_deployed"] is None else f"{r['fixed_deployed']:.3f}" for r in rows)
    click.echo(f"deployed model's {metric} on the fixed held-out set (n={fixed_n}), per iteration: {curve}"
               if fixed_n else rows[-1]["fixed_note"])  # fmt: skip
    click.echo(f"plot of {metric} per iteration, on the growing evaluation set and the fixed held-out set: {png}")
    click.echo("next:")
    click.echo(f"  {command('ui')}        every run, asset and gate decision in the Dagster UI: http://127.0.0.1:3000")
    click.echo(f"  {command('status')}    the champion, dataset versions, batches and quarantined clips")
