"""The `flywheel` command line. It drives Dagster: every run it starts is recorded in the instance.

One module for all commands (each a thin function over flywheel/ and Dagster): a reader looks up a
command here; the benchmarks' commands live in benchmarks/cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click

from flywheel.config import ConfigError, Settings, flywheel_home, load_settings, quiet_telemetry

quiet_telemetry()
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"
# In-process runs log every event to the instance (the UI shows them); the terminal stays quiet and
# the CLI reports failures itself (a gate that keeps the champion is a normal outcome, not an error).
# Dagster's console logger stays quiet (its failure events carry whole stack traces; the command says what
# failed in one line); the runs' own lines reach the terminal through assets/ui.py's `say`.
RUN_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# The UI lists a job's runs by job name and this tag (repository @ code location; `flywheel ui` loads the
# module flywheel.definitions, so that is the location's name): runs executed here carry it too, so
# they show under their job like runs launched from the UI.
UI_ORIGIN_TAG = {".dagster/repository": "__repository__@flywheel.definitions"}


def cli_run_tags() -> dict[str, str]:
    """Tags of a run this command executes in process: its process (recovery) and its place in the UI."""
    from flywheel.recovery import process_tags

    return {**process_tags(), **UI_ORIGIN_TAG}


class Ctx:
    def __init__(self, config: str | None, overrides: dict):
        self.config = config
        self.overrides = overrides
        try:
            self.settings: Settings = load_settings(config, **overrides)
        except ConfigError as e:
            raise click.ClickException(str(e)) from None

    def with_overrides(self, **more) -> Ctx:
        return Ctx(self.config, {**self.overrides, **more})

    def store(self):
        from flywheel.store import store_for

        return store_for(self.settings)

    def definitions(self):
        from flywheel.definitions import build_definitions

        return build_definitions(self.settings, config_path=self.config, overrides=self.overrides)

    def instance(self):
        import dagster as dg

        from flywheel.recovery import created_once

        home = prepare_dagster_home()
        # The first open creates the SQLite schemas; two commands on a fresh home must not both do it.
        with created_once(home / "instance"):
            return dg.DagsterInstance.get()


def prepare_dagster_home() -> Path:
    """`$DAGSTER_HOME` if set (production profiles), else `$FLYWHEEL_HOME/dagster` with our dagster.yaml."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = flywheel_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if PROJECT_DAGSTER_YAML.exists() and (
        not target.exists() or target.read_bytes() != PROJECT_DAGSTER_YAML.read_bytes()
    ):
        # Copied to a temporary name and renamed: another command may be reading it right now.
        tmp = home / f".dagster.yaml.{os.getpid()}.tmp"
        shutil.copyfile(PROJECT_DAGSTER_YAML, tmp)
        os.replace(tmp, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def fail_orphaned_runs(instance) -> list[str]:
    """Mark failed the runs that a command on this host executed in its own process and left
    unfinished when it was killed: left as they are, they would block every later training run
    (one at a time) and their batch's ingest retry. Returns their run ids."""
    import dagster as dg

    from flywheel.recovery import HOST_TAG, PID_TAG, process_gone

    S = dg.DagsterRunStatus
    here = dg.RunsFilter(
        statuses=[S.NOT_STARTED, S.STARTING, S.STARTED], tags={HOST_TAG: socket.gethostname()}
    )
    gone = [run for run in instance.get_runs(here) if process_gone(run.tags)]
    for run in gone:
        why = f"its process (pid {run.tags[PID_TAG]} on this host) is gone: killed or crashed"
        instance.report_run_failed(run, f"flywheel: {why}")
        click.echo(f"note: run {run.run_id} of {run.job_name} was left {run.status.value}; {why}; "
                   "marked it failed", err=True)  # fmt: skip  (stdout may be --json)
    return [run.run_id for run in gone]


class _Main(click.Group):
    """The command group; an S3 endpoint that cannot be reached is one line, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            endpoint = _unreachable_endpoint(e)
            if endpoint is None:
                raise
            raise click.ClickException(
                f"cannot reach the S3 endpoint {endpoint} (store.endpoint_url, else AWS_ENDPOINT_URL): "
                "is the server up and the address right?"
            ) from None


def _unreachable_endpoint(error: BaseException) -> str | None:
    """The scheme://host[:port] of an S3 endpoint that refused or timed out, found in `error`'s chain."""
    from urllib.parse import urlsplit

    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    while error is not None:
        if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
            url = urlsplit(error.kwargs.get("endpoint_url", ""))
            return f"{url.scheme}://{url.netloc}"
        error = error.__cause__ or error.__context__
    return None


# The demo's training budget: a few minutes on a laptop's CPU. The defaults (BENCHMARKS.md) train longer.
DEMO_BUDGET = {"train.steps": 300, "tune.baseline_epochs": 0}


def command(rest: str) -> str:
    """A flywheel command as the user types it where they stand: `./dev ui` when they started through
    ./dev (no `flywheel` on their PATH), with FLYWHEEL_HOME when they set one."""
    home = f"FLYWHEEL_HOME={os.environ['FLYWHEEL_HOME']} " if os.environ.get("FLYWHEEL_HOME") else ""
    return f"{home}{os.environ.get('FLYWHEEL_CLI', 'flywheel')} {rest}"


@click.group(cls=_Main)
@click.option("--config", "config", envvar="FLYWHEEL_CONFIG", type=click.Path(dir_okay=False),
              help="flywheel.yaml to use (default: $FLYWHEEL_CONFIG, else ./flywheel.yaml if present).")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, config: str | None):
    """flywheel: a data flywheel for perception models, on Dagster.

    \b
    Example: flywheel demo
    """
    ctx.obj = Ctx(config, {})
    # kill (SIGTERM) stops a command as Ctrl-C does: the run in process is recorded as interrupted
    signal.signal(signal.SIGTERM, signal.default_int_handler)


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


def run_sensor_once(obj: Ctx) -> list[dict]:
    """One tick of `fresh_fleet_data`, then each requested run executed in process (first, the runs
    that a killed command left unfinished are marked failed, so the sensor retries their batches).
    Per run: `batch_id`, `run_key`, `run_id`, `ok` and, if it failed, `error` (step: first line)."""
    import dagster as dg

    from resources.partitions import fleet_batches

    instance, defs = obj.instance(), obj.definitions()
    fail_orphaned_runs(instance)
    sensor = defs.resolve_sensor_def("fresh_fleet_data")
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
        result = sensor(ctx)
    if isinstance(result, dg.SkipReason):
        click.echo(f"sensor skipped: {result.skip_message}")
        return []
    # Applied here because a direct sensor call does not apply its partition requests.
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(fleet_batches.name, list(req.partition_keys))
    job = defs.resolve_job_def("ingest_batch")
    out = []
    for rr in result.run_requests or []:
        res = _execute(
            job,
            instance=instance,
            partition_key=rr.partition_key,
            tags={
                "dagster/run_key": rr.run_key,
                "dagster/sensor_name": sensor.name,
                **cli_run_tags(),
            },
            run_config=RUN_LOGS,
        )
        out.append({"batch_id": rr.partition_key, "run_key": rr.run_key, "run_id": res.run_id,
                    "ok": res.success, "error": None if res.success else _failure(res)})  # fmt: skip
    return out


def _failure(result) -> str:
    """What failed an in-process run, in one line: its failed steps and their errors' first lines."""
    from flywheel.recovery import failure_line

    failed = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    if not failed:
        return f"the run (no step failed; see it in `{command('ui')}`)"
    return "; ".join(failure_line(e.step_key, e.event_specific_data.error) for e in failed)


def _execute(job_def, **kwargs):
    """Run `job_def` in this process as a run of the instance the UI can re-execute (flywheel/driver.py)."""
    from flywheel.driver import execute

    return execute(job_def, **kwargs)


class Interrupted(click.ClickException):
    """A run stopped by Ctrl-C or a stop signal: exit status 130, as a shell expects."""

    exit_code = 130


def _check_run(result, what: str) -> None:
    """Nothing for a successful run; else one line on what failed (a crash: 1; an interruption: 130)."""
    from flywheel.recovery import INTERRUPTED

    if result.success:
        return
    why = _failure(result)
    if INTERRUPTED in why:
        raise Interrupted(f"{what} (run {result.run_id}) was interrupted ({why}); run it again to go on "
                          "(training resumes from its last checkpoint)")  # fmt: skip
    raise click.ClickException(f"{what} (run {result.run_id}) failed in {why}")


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


def run_iteration(obj: Ctx, *, annotate: bool = False) -> dict:
    """Ingest every pending clip, then run `train_and_deploy`; a failed gate is a normal outcome.

    `annotate`: the simulated labeling team answers the Label Studio queue before training (the demo).
    """
    import dagster as dg

    from flywheel.report import iteration_summary
    from flywheel.tracking import tracker_for
    from jobs import TRAINING_TAGS

    ingested = run_sensor_once(obj.with_overrides(**{"sensor.min_clips": 1}))
    for r in ingested:
        if not r["ok"]:
            raise click.ClickException(
                f"ingest of batch {r['batch_id']} failed in {r['error']} (run {r['run_id']})"
            )
    if annotate:
        answer_and_relabel(obj)
    instance, defs = obj.instance(), obj.definitions()
    fail_orphaned_runs(instance)
    busy = instance.get_run_ids(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING], tags=TRAINING_TAGS)
    )
    if busy:
        raise click.ClickException(
            f"a training run is in progress ({busy[0]}); one at a time (if its process died on another "
            f"machine, or was the daemon's, terminate the run in `{command('ui')}` first)"
        )
    result = _execute(
        defs.resolve_job_def("train_and_deploy"),
        instance=instance,
        tags={**TRAINING_TAGS, "flywheel/trigger": "cli", **cli_run_tags()},
        run_config=RUN_LOGS,
    )
    _check_run(result, "the iteration")  # a crash; a kept champion is a successful run (flywheel/gate=kept)
    summary = iteration_summary(obj.store(), obj.settings, tracker_for(obj.settings))
    auto = auto_label_accuracy(obj.store(), obj.settings, [r["batch_id"] for r in ingested])
    return {**summary, "run_id": result.run_id, "auto_labels": auto}


def answer_and_relabel(obj: Ctx) -> list[str]:
    """The simulated labeling team answers the queue from outside, through labeling/ files, as people
    would; each answered batch that no dataset version holds yet gets its `labels` and `augmented`
    materialized again, so the answers count. Returns those batch ids."""
    import dagster as dg

    from flywheel.dataset import waiting_batches
    from flywheel.sim.annotator import answer_queue

    s, st = obj.settings, obj.store()
    answered = answer_queue(st, classes=s.classes, error_rate=s.sim.annotator_error_rate,
                            delay_batches=s.sim.annotator_delay_batches, seed=s.engine.seed)["answered_batches"]  # fmt: skip
    _, waiting = waiting_batches(st, s.dataset.name)
    relabel = [b for b in answered if b in waiting]
    instance, job = obj.instance(), obj.definitions().resolve_job_def("ingest_batch")
    for batch_id in relabel:
        res = _execute(
            job,
            instance=instance, partition_key=batch_id, asset_selection=[dg.AssetKey("labels"), dg.AssetKey("augmented")],
            tags={"flywheel/trigger": "labels-answered", **cli_run_tags()}, run_config=RUN_LOGS,
        )  # fmt: skip
        if not res.success:
            raise click.ClickException(f"relabeling batch {batch_id} failed; see `{command('ui')}` for run {res.run_id}")
    return relabel


def auto_label_accuracy(store, settings, batch_ids: list[str]) -> dict:
    """The champion's auto labels of these batches against the clips' hidden ground truth (the
    simulator's): {"compared", "correct", "accuracy"}; accuracy None when nothing compares."""
    from flywheel import layout
    from flywheel.engine.quality import auto_accuracy_vs_truth

    compared = correct = 0
    for b in batch_ids:
        out = auto_accuracy_vs_truth(store.read_parquet(layout.labels_key(b)), store.read_parquet(layout.frames_key(b)),
                                     settings.classes)  # fmt: skip
        compared, correct = compared + out["compared"], correct + out["correct"]
    return {"compared": compared, "correct": correct, "accuracy": correct / compared if compared else None}


def format_summary(s: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    gate = "PASSED" if s["gate_passed"] else f"kept the champion ({s['gate_reason']})"
    auto = s.get("auto_labels") or {}
    autos = f"auto-labels {auto['compared']} at {auto['accuracy']:.1%} correct | " if auto.get("compared") else ""
    if s["fixed_frames"] is None:
        fixed = s["fixed_note"]
    else:  # the same frames every turn: a rise here is a better model, not an easier test
        fixed = (f"{s['metric']} on the fixed held-out set (n={s['fixed_frames']}, frozen from dataset "
                 f"v{s['fixed_from_version']}): deployed {s['deployed'] or '-'} {f(s['fixed_deployed'])} | "
                 f"challenger {f(s['fixed_challenger'])} vs champion {f(s['fixed_champion'])}")  # fmt: skip
    return (
        f"{autos}dataset v{s['dataset_version']} ({s['frames']} rows, {s['eval_frames']} in the growing "
        f"evaluation set) | {s['metric']}: challenger v{s['challenger_version']} {f(s['challenger'])} vs champion "
        f"{f(s['champion'])} | {s['rare_slice']}: {f(s['challenger_rare'])} vs {f(s['champion_rare'])} | "
        f"gate {gate} | deployed {s['deployed'] or '-'}\n  {fixed}"
    )


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
    result = _execute(
        defs.resolve_job_def("tune"),
        instance=instance, tags={**TRAINING_TAGS, "flywheel/trigger": "cli", **cli_run_tags()},
        run_config={**RUN_LOGS, "ops": {"trainer_config": {"config": budget}}},
    )  # fmt: skip
    _check_run(result, "tuning")
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
    from flywheel import champion
    from flywheel.deploy import RollbackError
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
    _check_run(result, f"approving v{config['approve_version']}")
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
    from flywheel import loop
    from flywheel.tracking import tracker_for

    try:
        record = loop.force(obj.store(), obj.settings, tracker_for(obj.settings), version, reason=reason)
    except ValueError as e:  # not the challenger, passed anyway, no reason
        raise click.ClickException(str(e)) from None
    result = _deploy_run(obj, "force", {})
    _check_run(result, f"deploying forced v{record['version']}")
    click.echo(f"v{record['version']} forced by {record['account']}@{record['host']} and deployed (run {result.run_id})")


def _deploy_run(obj: Ctx, trigger: str, op_config: dict):
    """The `deployed` asset, executed in process in the instance the UI reads."""
    import dagster as dg

    return _execute(
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
    from flywheel.diff import diff_versions, markdown

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
    result = _execute(
        obj.definitions().resolve_job_def("mining_campaign"),
        instance=instance, partition_key=name, tags=cli_run_tags(),
        run_config={**RUN_LOGS, "ops": {"campaign": {"config": config}}},
    )  # fmt: skip
    if not result.success and not obj.store().exists(campaign_key(name)):  # nothing started: no partition left behind
        instance.delete_dynamic_partition(mining_campaigns.name, name)
    _check_run(result, f"campaign {name}")
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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--label-studio", "label_studio", is_flag=True,
              help="Also start Label Studio on 127.0.0.1 for the human queue (installed into its own "
                   "environment on first use); the label_studio_answers sensor syncs with it.")  # fmt: skip
@click.option("--label-studio-port", type=int, default=8080, show_default=True)
@click.pass_obj
def ui(obj: Ctx, host: str, port: int, label_studio: bool, label_studio_port: int):
    """Run the Dagster webserver and daemon (sensors, schedules, run queue) until Ctrl-C.

    \b
    Example: flywheel ui --port 3000 --label-studio
    """
    obj.instance().dispose()  # a fresh home's storage is created here, under the lock, not by dagster dev
    env = dict(os.environ)
    if obj.config:
        env["FLYWHEEL_CONFIG"] = str(Path(obj.config).resolve())
    studio = _start_label_studio(obj, env, label_studio_port) if label_studio else None
    try:
        _run_dagster_dev(env, host, port)
    finally:
        if studio is not None:
            studio.stop()


def _start_label_studio(obj: Ctx, env: dict, port: int):
    """Start Label Studio beside Dagster and point the sensor at it (LABEL_STUDIO_URL and its token)."""
    from flywheel import labelstudio_server
    from flywheel.labelstudio_sync import local_files_root
    from flywheel.store import LocalStore

    st, s = obj.store(), obj.settings
    data = flywheel_home() / "labelstudio"
    # what the server may hand out: the queued images alone (S3 stores serve them by presigned URL)
    root = Path(s.labelstudio.document_root) if s.labelstudio.document_root else (
        local_files_root(st) if isinstance(st, LocalStore) else data / "local-files")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    click.echo(f"starting Label Studio (data in {data}; the first start sets up its database, about a minute)")
    server = labelstudio_server.start(data_dir=data, port=port, document_root=root,
                                      exe=labelstudio_server.ensure_installed(echo=click.echo))  # fmt: skip
    env.update(LABEL_STUDIO_URL=server.url, **{s.labelstudio.api_key_env: server.token})
    click.echo(f"Label Studio on {server.url}: log in as {labelstudio_server.USER}, with the password in "
               f"{labelstudio_server.password_file(data)}")  # fmt: skip
    return server


def _run_dagster_dev(env: dict, host: str, port: int) -> None:
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "flywheel.definitions", "-h", host, "-p", str(port)]
    click.echo(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={env['DAGSTER_HOME']}); Ctrl-C stops it")
    # dagster dev must see SIGINT even when this command was started in the background
    # (where the shell makes children ignore SIGINT), so restore the default handler in it.
    proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def stop(signum, _frame):  # Ctrl-C, kill -INT or kill -TERM: let dagster dev stop its webserver and daemon
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        proc.wait(timeout=None)
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=10)
    raise SystemExit(0 if proc.returncode in (0, -signal.SIGINT, 130) else proc.returncode)


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
@click.pass_obj
def demo(obj: Ctx, iterations: int, clips: int, label_budget: int, seed: int, engine: bool, full_recipe: bool):
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
    if engine:
        obj = obj.with_overrides(**{"engine.enabled": True, "engine.label_budget": label_budget})
    from flywheel.sim import simulate as run_sim

    click.echo(f"flywheel home: {home}")
    t = obj.settings.train
    budget = f"{t.epochs} epochs" if t.epochs else f"{t.steps} steps"
    check = f"yardstick check {obj.settings.tune.baseline_epochs} epochs" if obj.settings.tune.baseline_epochs else "no yardstick check"
    click.echo(f"training: {budget} per challenger, {check}" + ("" if full_recipe else " (the demo's budget; --full-recipe for the defaults)"))
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


from benchmarks.cli import bench  # noqa: E402  (registered once main exists)

main.add_command(bench)


if __name__ == "__main__":
    main()
