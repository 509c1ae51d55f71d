"""The `flywheel` commands a person runs day to day: simulate, ingest, iterate, tune, rollback,
requeue, approve, force, diff, campaign, status. Each is a thin function over flywheel/ and the
driver (flywheel/cli/driver.py); `ui` and `demo` have modules of their own."""

from __future__ import annotations

import json

import click

from flywheel.cli.base import RUN_LOGS, Ctx, cli_run_tags, command, main
from flywheel.cli.driver import (
    check_run,
    execute,
    fail_orphaned_runs,
    format_summary,
    run_iteration,
    run_sensor_once,
)


@main.command()
@click.option("--clips", type=click.IntRange(min=1), required=True, help="How many clips to upload.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def simulate(obj: Ctx, clips: int, seed: int):
    """Simulate the fleet: write CLIPS MCAP clips to landing/.

    \b
    Example: flywheel simulate --clips 40
    """
    from flywheel.engine.shadow import fleet_filter
    from flywheel.sim import simulate as run_sim

    store = obj.store()
    shadow = fleet_filter(store, obj.settings)
    keys = run_sim(store, obj.settings, clips=clips, seed=seed, upload_filter=shadow, progress=True)
    mode = "shadow mode: the deployed model picks low_confidence uploads" if shadow else "random uploads"
    click.echo(f"uploaded {len(keys)} clip(s) to {store.uri('landing/')} ({mode})")


@main.command()
@click.option("--min-clips", type=click.IntRange(min=1), default=None,
              help="Threshold of new clips for a batch (default: sensor.min_clips).")  # fmt: skip
@click.pass_obj
def ingest(obj: Ctx, min_clips: int | None):
    """Evaluate the fresh-data sensor once and run the ingest it requests, in process.

    \b
    Example: flywheel ingest --min-clips 1
    """
    from flywheel.progress import shown

    if min_clips is not None:
        obj = obj.with_overrides(**{"sensor.min_clips": min_clips})
    with shown():  # the clips read, as bars on this terminal: the runs execute in this process
        results = run_sensor_once(obj)
    for r in results:
        attempt = f" ({r['run_key']})" if r["run_key"] != r["batch_id"] else ""
        if r["ok"]:
            click.echo(f"batch {r['batch_id']}: ingest succeeded{attempt}")
        else:
            click.echo(f"batch {r['batch_id']}: ingest FAILED{attempt} in {r['error']} "
                       f"(run {r['run_id']}; retried later, with backoff)")  # fmt: skip
    if not all(r["ok"] for r in results):
        raise SystemExit(1)



@main.command()
@click.pass_obj
def iterate(obj: Ctx):
    """One full iteration through Dagster, in process: ingest what waits, train, gate, deploy.

    \b
    Example: flywheel iterate
    """
    from flywheel.progress import shown

    with shown():  # clips read and evaluation passes, as bars on this terminal (runs in process)
        summary = run_iteration(obj)
    click.echo(format_summary(summary))



@main.command("tune")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Trials to run (default: tune.trials).")  # fmt: skip
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Start no trial after this many minutes (default: tune.minutes).")  # fmt: skip
@click.pass_obj
def tune_command(obj: Ctx, trials: int | None, minutes: float | None):
    """Search the trainer's recipe with Optuna on the latest dataset version, through Dagster, in
    process (the `tune` job); the next challenger trains with the best values for the `train:`
    fields flywheel.yaml does not set.

    \b
    Example: flywheel tune --trials 10 --minutes 15
    """
    import dagster as dg

    from flywheel import layout
    from jobs import TRAINING_TAGS

    instance, defs = obj.instance(), obj.definitions()
    fail_orphaned_runs(instance)  # a killed run must not block every later one
    running = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
    busy = instance.get_run_ids(dg.RunsFilter(statuses=running, tags=TRAINING_TAGS))
    if busy:  # tuning trains too: one training run at a time, as for `iterate`
        raise click.ClickException(f"a training run is in progress ({busy[0]}); one at a time")
    budget = {k: v for k, v in {"trials": trials, "minutes": minutes}.items() if v is not None}
    result = execute(
        defs.resolve_job_def("tune"),
        instance=instance, tags={**TRAINING_TAGS, "flywheel/trigger": "cli", **cli_run_tags()},
        run_config={**RUN_LOGS, "ops": {"trainer_config": {"config": budget}}},
    )  # fmt: skip
    check_run(result, "tuning")
    tuned = obj.store().read_json(layout.trainer_config_key(obj.settings.dataset.name))
    t = tuned["trials"]
    click.echo(f"study {tuned['study']} ({tuned['storage']}): {t['run']} trial(s) run, "
               f"{t['pruned']} pruned, {t['in_study']} in the study")  # fmt: skip
    click.echo(f"best {tuned['metric']} on val of dataset v{tuned['dataset']['version']}: "
               f"{tuned['best_value']:.4f} (trial {tuned['best_trial']})")  # fmt: skip
    for name, value in tuned["params"].items():
        click.echo(f"  train.{name}: {value:.4g}" if isinstance(value, float) else f"  train.{name}: {value}")
    click.echo("the next challenger trains with these values (a value set in flywheel.yaml wins)")


@main.command()
@click.pass_obj
def rollback(obj: Ctx):
    """Move the champion (current.json and the MLflow alias) back to the previous one.

    \b
    Example: flywheel rollback
    """
    from flywheel.deployment import champion
    from flywheel.deployment.deploy import RollbackError
    from flywheel.tracking import tracker_for

    try:
        frm, to = champion.rollback(obj.store(), obj.settings, tracker_for(obj.settings))
    except RollbackError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"rolled back: champion {frm} -> {to}")


@main.command()
@click.argument("key")
@click.pass_obj
def requeue(obj: Ctx, key: str):
    """Send a quarantined clip (its landing or quarantine key) back to landing, for the next batch.

    \b
    Example: flywheel requeue landing/veh-1/2026-11-01/c042.mcap
    """
    from flywheel.ingest import requeue as requeue_clip

    try:
        done = requeue_clip(obj.store(), key)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    for src, dst in done["moved"]:
        click.echo(f"moved {src} -> {dst}")
    for removed in done["removed"]:
        click.echo(f"removed {removed}")


@main.command()
@click.argument("version")
@click.option("--by", "by", default=None,
              help="Who approves (default: your account; the account is recorded beside it in any case).")  # fmt: skip
@click.option("--reason", required=True, help="Why (recorded with the deploy).")
@click.pass_obj
def approve(obj: Ctx, version: str, by: str | None, reason: str):
    """Approve the challenger VERSION that passed the gate (gate.require_approval) and deploy it, through
    Dagster in process (the `deployed` asset, with the approval as its config).

    \b
    Example: flywheel approve v7 --reason "checked the fog frames"
    """
    from flywheel import layout

    config = {"approve_version": version.removeprefix("v"), "approved_by": by, "reason": reason}
    result = _deploy_run(obj, "approve", {"config": config})
    check_run(result, f"approving v{config['approve_version']}")
    record = obj.store().read_json(layout.approval_key(obj.settings.mlflow.model_name, config["approve_version"]))
    click.echo(f"v{config['approve_version']} approved by {record['by']} (account {record['account']}) "
               f"and deployed (run {result.run_id})")  # fmt: skip


@main.command()
@click.argument("version")
@click.option("--reason", required=True, help="Why the gate's judgement is overruled (recorded with the deploy).")
@click.pass_obj
def force(obj: Ctx, version: str, reason: str):
    """Deploy the challenger VERSION although the gate kept the champion: for this version and the
    weights the gate judged only (the next challenger faces the gate as usual). Recorded with your
    account, host and reason (forces/, the deploy manifest's forced_by, MLflow tags); a forced version
    needs no approval. Runs the `deployed` asset through Dagster in process.

    \b
    Example: flywheel force v7 --reason "the fog drop is a labelling error, see ticket 412"
    """
    from flywheel.evaluation import approvals
    from flywheel.tracking import tracker_for

    try:
        record = approvals.force(obj.store(), obj.settings, tracker_for(obj.settings), version, reason=reason)
    except ValueError as e:  # not the challenger, passed anyway, no reason
        raise click.ClickException(str(e)) from None
    result = _deploy_run(obj, "force", {})
    check_run(result, f"deploying forced v{record['version']}")
    click.echo(f"v{record['version']} forced by {record['account']}@{record['host']} and deployed (run {result.run_id})")


def _deploy_run(obj: Ctx, trigger: str, op_config: dict):
    """The `deployed` asset, executed in process in the instance the UI reads."""
    import dagster as dg

    return execute(
        obj.definitions().resolve_job_def("train_and_deploy"),
        instance=obj.instance(), asset_selection=[dg.AssetKey("deployed")],
        run_config={**RUN_LOGS, "ops": {"deployed": op_config}} if op_config else RUN_LOGS,
        tags={"flywheel/trigger": trigger, **cli_run_tags()},
    )  # fmt: skip


@main.command()
@click.argument("before")
@click.argument("after")
@click.option("--dataset", "name", default=None, help="Dataset name (default: dataset.name).")
@click.option("--json", "as_json", is_flag=True, help="The diff as JSON instead of Markdown tables.")
@click.pass_obj
def diff(obj: Ctx, before: str, after: str, name: str | None, as_json: bool):
    """What changed between two dataset versions (BEFORE, AFTER: numbers, or v1, v2): batches, clips and
    frames added, counts per split, class, condition and trigger, labels that changed.

    \b
    Example: flywheel diff v3 v5 --json
    """
    from flywheel.data.diff import diff_versions, markdown

    versions = []
    for v in (before, after):
        if not v.removeprefix("v").isdigit():
            raise click.BadParameter(f"{v!r} is not a dataset version: use a number or v<number>")
        versions.append(int(v.removeprefix("v")))
    try:
        out = diff_versions(obj.store(), name or obj.settings.dataset.name, *versions)
    except (ValueError, FileNotFoundError) as e:  # a version that does not exist, other class lists
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(out, indent=2) if as_json else markdown(out))


@main.group()
def campaign():
    """Mining campaigns ("find more like this"): the fleet uploads clips that look like chosen frames.

    \b
    Example: flywheel campaign start fog-hunt --slice condition=fog
    """


@campaign.command("start")
@click.argument("name")
@click.option("--slice", "slice_", default=None, metavar="COLUMN=VALUE",
              help="The slice to find more of, e.g. condition=fog (default: the champion's worst slice).")  # fmt: skip
@click.option("--frames", "frame_ids", default=None, metavar="ID,ID,...",
              help="Or frames of the latest dataset version, by frame_id, comma-separated.")  # fmt: skip
@click.option("--max-frames", type=click.IntRange(min=1), default=32, show_default=True, help="Query frames at most.")
@click.option("--match-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Share of ordinary frames that would match (sets the similarity threshold).")  # fmt: skip
@click.pass_obj
def campaign_start(obj: Ctx, name: str, slice_: str | None, frame_ids: str | None, max_frames: int, match_share: float):
    """Start campaign NAME (a partition of the `mining_campaign` job, run through the instance).

    \b
    Example: flywheel campaign start fog-hunt --slice condition=fog
    """
    from flywheel.layout import campaign_key, check_name
    from resources.partitions import mining_campaigns

    try:
        check_name(name, "campaign name")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    config = {"slice": slice_, "frame_ids": [f.strip() for f in (frame_ids or "").split(",") if f.strip()],
              "max_frames": max_frames, "match_share": match_share}  # fmt: skip
    instance = obj.instance()
    instance.add_dynamic_partitions(mining_campaigns.name, [name])
    result = execute(
        obj.definitions().resolve_job_def("mining_campaign"),
        instance=instance, partition_key=name, tags=cli_run_tags(),
        run_config={**RUN_LOGS, "ops": {"campaign": {"config": config}}},
    )  # fmt: skip
    if not result.success and not obj.store().exists(campaign_key(name)):  # nothing started: no partition left behind
        instance.delete_dynamic_partition(mining_campaigns.name, name)
    check_run(result, f"campaign {name}")
    _echo_campaigns(obj, [name])


@campaign.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def campaign_list(obj: Ctx, as_json: bool):
    """Every campaign: its slice, the clips it brought, and the slice's score before and after.

    \b
    Example: flywheel campaign list --json
    """
    from flywheel.engine import campaigns

    if as_json:
        click.echo(json.dumps(campaigns.effects(obj.store(), obj.settings), indent=2))
    else:
        _echo_campaigns(obj, None)


@campaign.command("stop")
@click.argument("name")
@click.pass_obj
def campaign_stop(obj: Ctx, name: str):
    """The fleet stops mining for campaign NAME; what it brought stays on record.

    \b
    Example: flywheel campaign stop fog-hunt
    """
    from flywheel.engine import campaigns

    try:
        campaigns.stop(obj.store(), name)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"campaign {name} stopped")


def _echo_campaigns(obj: Ctx, names: list[str] | None) -> None:
    from flywheel.engine import campaigns

    rows = [e for e in campaigns.effects(obj.store(), obj.settings) if names is None or e["name"] in names]
    if not rows:
        click.echo(f"no campaigns yet: {command('campaign start NAME --slice condition=fog')}")
    for e in rows:
        after = f"{e['after']:.3f} (v{e['after_model']})" if e["after"] is not None else "- (no model trained on its clips yet)"
        before = "-" if e["before"] is None else f"{e['before']:.3f}"
        click.echo(f"{e['name']}: {e['slice']} {'active' if e['active'] else 'stopped'}; {e['clips']} clips brought; "
                   f"{e['metric']} on the slice {before} (v{e['before_model']}) -> {after}")  # fmt: skip


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj: Ctx, as_json: bool):
    """Batches, frames, pending and quarantined clips (and the champion, once there is one).

    \b
    Example: flywheel status --json
    """
    from flywheel.report import status as status_report

    report = status_report(obj.store(), obj.settings)
    states = _ingest_states(obj, [b["batch_id"] for b in report["batches"]])
    for b in report["batches"]:
        b["ingest"] = states.get(b["batch_id"], {"state": "not started"})
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"store       {report['store']}")
    champ = report["champion"]
    if champ:
        metrics = " ".join(f"{k}={v:.3f}" for k, v in champ["metrics"].items())
        click.echo(f"champion    {champ['version']} ({metrics}) on dataset v{champ['dataset']['version']}")
    else:
        click.echo("champion    none deployed yet")
    click.echo(f"dataset     v{report['dataset_version']}" if report["dataset_version"] else "dataset     none yet")
    click.echo(f"batches     {len(report['batches'])}  frames {report['frames']}")
    for b in report["batches"]:  # those not done: a frame count alone would read as done
        ingest = b["ingest"]
        if ingest["state"] != "done":
            click.echo(f"  {b['batch_id']}: ingest {_ingest_line(ingest)}")
    click.echo(f"parked      {len(report['parked'])} batch(es) whose ingest kept failing")
    for p in report["parked"]:
        click.echo(f"  {p['batch_id']}: {p['failures']} failed runs, the last in {p['error']}")
    click.echo(f"pending     {report['pending_clips']} clip(s) in landing")
    click.echo(f"quarantined {report['quarantined']} clip(s)")
    for q in report["quarantine"][:20]:
        click.echo(f"  {q['key']}: {q['reason']} ({q['detail']})")


def _ingest_states(obj: Ctx, batch_ids: list[str]) -> dict[str, dict]:
    """Each batch's ingest state from the instance's runs (a run whose process died is failed first)."""
    import time

    from sensors.fresh_data import ingest_states

    instance = obj.instance()
    fail_orphaned_runs(instance)
    return ingest_states(instance, obj.store(), obj.settings.sensor, batch_ids, now=time.time())


def _ingest_line(ingest: dict) -> str:
    from datetime import datetime

    state, error = ingest["state"], ingest.get("error")
    if state == "waiting":
        at = datetime.fromtimestamp(ingest["retry_at"]).strftime("%H:%M:%S")
        line = f"failed {ingest['failures']}x, the sensor retries it at {at}"
    elif state == "due":
        line = f"failed {ingest['failures']}x, the sensor's next tick retries it"
    elif state == "parked":
        line = f"parked after {ingest['failures']} failed runs"
    else:
        line = state
    hint = f" (or run its partition from `{command('ui')}`: ingest_batch)" if state in ("waiting", "parked", "due") else ""
    return line + (f"; last error: {error}" if error else "") + hint
