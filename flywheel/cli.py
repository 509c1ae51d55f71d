"""The `flywheel` command line. It drives Dagster: every run it starts is recorded in the instance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click

from flywheel.config import ConfigError, Settings, flywheel_home, load_settings, quiet_telemetry

quiet_telemetry()
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"
# In-process runs log every event to the instance (the UI shows them); the terminal stays quiet and
# the CLI reports failures itself (a gate that keeps the champion is a normal outcome, not an error).
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


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
        from flywheel.store import open_store

        s = self.settings.store
        return open_store(self.settings.store_root, endpoint_url=s.endpoint_url, region=s.region)

    def definitions(self):
        from flywheel.definitions import build_definitions

        return build_definitions(self.settings, config_path=self.config, overrides=self.overrides)

    def instance(self):
        import dagster as dg

        prepare_dagster_home()
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
        shutil.copyfile(PROJECT_DAGSTER_YAML, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@click.group()
@click.option("--config", "config", envvar="FLYWHEEL_CONFIG", type=click.Path(dir_okay=False),
              help="flywheel.yaml to use (default: $FLYWHEEL_CONFIG, else ./flywheel.yaml if present).")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, config: str | None):
    """flywheel: a data flywheel for perception models, on Dagster."""
    ctx.obj = Ctx(config, {})


@main.command()
@click.option("--clips", type=click.IntRange(min=1), required=True, help="How many clips to upload.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def simulate(obj: Ctx, clips: int, seed: int):
    """Simulate the fleet: write CLIPS MCAP clips to landing/."""
    from flywheel.loop import fleet_upload_filter
    from flywheel.sim import simulate as run_sim

    store = obj.store()
    shadow = fleet_upload_filter(store, obj.settings)
    keys = run_sim(store, obj.settings, clips=clips, seed=seed, upload_filter=shadow, progress=True)
    mode = "shadow mode: the deployed model picks low_confidence uploads" if shadow else "random uploads"
    click.echo(f"uploaded {len(keys)} clip(s) to {store.uri('landing/')} ({mode})")


@main.command()
@click.option("--min-clips", type=click.IntRange(min=1), default=None,
              help="Threshold of new clips for a batch (default: sensor.min_clips).")  # fmt: skip
@click.pass_obj
def ingest(obj: Ctx, min_clips: int | None):
    """Evaluate the fresh-data sensor once and run the ingest it requests, in process."""
    if min_clips is not None:
        obj = obj.with_overrides(**{"sensor.min_clips": min_clips})
    results = run_sensor_once(obj)
    if not results:
        return
    for batch_id, ok in results:
        click.echo(f"batch {batch_id}: ingest {'succeeded' if ok else 'FAILED'}")
    if not all(ok for _, ok in results):
        raise SystemExit(1)


def run_sensor_once(obj: Ctx) -> list[tuple[str, bool]]:
    """One tick of `fresh_fleet_data`, then each requested run executed in process."""
    import dagster as dg

    from assets.partitions import fleet_batches

    instance, defs = obj.instance(), obj.definitions()
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
        res = job.execute_in_process(
            instance=instance,
            partition_key=rr.partition_key,
            tags={"dagster/run_key": rr.run_key, "dagster/sensor_name": sensor.name},
            run_config=QUIET_RUN,
            raise_on_error=False,
        )
        out.append((rr.partition_key, res.success))
    return out


@main.command()
@click.pass_obj
def iterate(obj: Ctx):
    """One full iteration through Dagster, in process: ingest what waits, train, gate, deploy."""
    summary = run_iteration(obj)
    click.echo(format_summary(summary))


def run_iteration(obj: Ctx) -> dict:
    """Ingest every pending clip, then run `train_and_deploy`; a failed gate is a normal outcome."""
    import dagster as dg

    from flywheel import loop
    from jobs import TRAINING_TAGS

    for batch_id, ok in run_sensor_once(obj.with_overrides(**{"sensor.min_clips": 1})):
        if not ok:
            raise click.ClickException(f"ingest of batch {batch_id} failed; see `flywheel ui` for its run")
    instance, defs = obj.instance(), obj.definitions()
    busy = instance.get_run_ids(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING], tags=TRAINING_TAGS)
    )
    if busy:
        raise click.ClickException(f"a training run is in progress ({busy[0]}); one at a time")
    result = defs.resolve_job_def("train_and_deploy").execute_in_process(
        instance=instance, tags={**TRAINING_TAGS, "flywheel/trigger": "cli"}, run_config=QUIET_RUN,
        raise_on_error=False,
    )
    if not result.success:
        failed = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        gate_failed = any(
            e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
            for e in result.all_events
        )
        if not (gate_failed and all("evaluation" in (e.step_key or "") for e in failed)):
            msg = "; ".join(f"{e.step_key}: {e.message}" for e in failed) or "see the run in the UI"
            raise click.ClickException(f"iteration run {result.run_id} failed: {msg}")
    summary = loop.iteration_summary(obj.store(), obj.settings, loop.tracker_for(obj.settings))
    return {**summary, "run_id": result.run_id}


def format_summary(s: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    gate = "PASSED" if s["gate_passed"] else f"kept the champion ({s['gate_reason']})"
    return (
        f"dataset v{s['dataset_version']} ({s['frames']} rows, {s['eval_frames']} eval frames) | "
        f"{s['metric']}: challenger v{s['challenger_version']} {f(s['challenger'])} vs champion "
        f"{f(s['champion'])} | {s['rare_slice']}: {f(s['challenger_rare'])} vs {f(s['champion_rare'])} | "
        f"gate {gate} | deployed {s['deployed'] or '-'}"
    )


@main.command()
@click.pass_obj
def rollback(obj: Ctx):
    """Move the champion (current.json and the MLflow alias) back to the previous one."""
    from flywheel import loop
    from flywheel.deploy import RollbackError

    try:
        frm, to = loop.rollback_champion(obj.store(), obj.settings, loop.tracker_for(obj.settings))
    except RollbackError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"rolled back: champion {frm} -> {to}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj: Ctx, as_json: bool):
    """Batches, frames, pending and quarantined clips (and the champion, once there is one)."""
    from flywheel import dataset, loop
    from flywheel.ingest import ingest_status

    st = obj.store()
    name = obj.settings.dataset.name
    report = {
        "store": obj.settings.store_root,
        "champion": loop.champion_status(st, obj.settings),
        "dataset_version": dataset.latest_version(st, name),
        **ingest_status(st),
    }
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
    click.echo(f"pending     {report['pending_clips']} clip(s) in landing")
    click.echo(f"quarantined {report['quarantined']} clip(s)")
    for q in report["quarantine"][:20]:
        click.echo(f"  {q['key']}: {q['reason']} ({q['detail']})")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=3000, show_default=True)
@click.pass_obj
def ui(obj: Ctx, host: str, port: int):
    """Run the Dagster webserver and daemon (sensors, schedules, run queue) until Ctrl-C."""
    prepare_dagster_home()
    env = dict(os.environ)
    if obj.config:
        env["FLYWHEEL_CONFIG"] = str(Path(obj.config).resolve())
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
@click.pass_obj
def demo(obj: Ctx, iterations: int, clips: int, label_budget: int, seed: int, engine: bool):
    """Turn the whole loop a few times while the fleet's conditions drift, and plot the result."""
    from flywheel import plots
    from flywheel.ingest import pending_clips
    from flywheel.loop import fleet_upload_filter

    home = flywheel_home()
    if (home / "batches").exists() or pending_clips(obj.store()):
        click.echo(f"note: {home} already holds flywheel data; the demo goes on from it "
                   "(set FLYWHEEL_HOME to an empty folder for a fresh start)")  # fmt: skip
    # Conditions drift from the start mix to the end mix over the demo's uploads.
    obj = obj.with_overrides(**{"sim.drift_clips": iterations * clips})
    if engine:
        obj = obj.with_overrides(**{"engine.enabled": True, "engine.simulated_annotator": True,
                                    "engine.label_budget": label_budget})  # fmt: skip
    from flywheel.sim import simulate as run_sim

    click.echo(f"flywheel home: {home}")
    rows, spent = [], 0
    for i in range(1, iterations + 1):
        shadow = fleet_upload_filter(obj.store(), obj.settings)
        how = "shadow mode picks low_confidence clips" if shadow else "random uploads"
        click.echo(f"\n== iteration {i}/{iterations}: the fleet records {clips} clips ({how})")
        keys = run_sim(obj.store(), obj.settings, clips=clips, seed=seed, upload_filter=shadow, progress=True)
        summary = run_iteration(obj)
        summary["uploaded"], summary["labels_spent"] = len(keys), summary["human_labels"] - spent
        spent = summary["human_labels"]
        rows.append({"iteration": i, **summary})
        click.echo(f"uploaded {len(keys)} clips; human labels spent {summary['labels_spent']}")
        click.echo(format_summary(summary))
    metric, rare = rows[-1]["metric"], rows[-1]["rare_slice"]
    plot_rows = [{"iteration": r["iteration"], f"challenger {metric}": r["challenger"],
                  f"challenger {rare}": r["challenger_rare"],
                  f"deployed {metric}": r["champion"] if not r["gate_passed"] else r["challenger"]} for r in rows]  # fmt: skip
    png = home / "demo.png"
    png.write_bytes(plots.metric_vs_iteration_png(plot_rows, [k for k in plot_rows[0] if k != "iteration"]))
    (home / "demo.json").write_text(json.dumps(rows, indent=2, default=str))
    deployed = sum(r["gate_passed"] for r in rows)
    click.echo(f"\n{iterations} iterations, {deployed} deployed; champion now {rows[-1]['deployed'] or 'none'}")
    click.echo(f"plot of {metric} per iteration: {png}")
    click.echo(f"every run is in the Dagster UI: FLYWHEEL_HOME={home} flywheel ui  (then open http://127.0.0.1:3000)")


@main.group()
def bench():
    """Benchmarks (figures and commands in BENCHMARKS.md)."""


@bench.command("ingest")
@click.option("--clips", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default=None)
@click.pass_obj
def bench_ingest(obj: Ctx, clips: int, workdir: str | None):
    """Frames/s and MB/s from landing MCAP to frames Parquet, beside the raw MCAP read rate."""
    from flywheel.bench import bench_ingest as run

    click.echo(json.dumps(run(obj.settings, clips=clips, workdir=workdir), indent=2))


@bench.command("loader")
@click.option("--frames", type=click.IntRange(min=64), default=2000, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default=None)
@click.pass_obj
def bench_loader(obj: Ctx, frames: int, workdir: str | None):
    """Images/s into uint8 tensors: shard reader vs ImageFolder-style files vs tar vs decode-only ceiling."""
    import tempfile

    from flywheel.bench_data import bench_loader as run

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        click.echo(json.dumps(run(tmp, frames=frames, image_size=obj.settings.image_size), indent=2))


@bench.command("append")
@click.option("--workdir", type=click.Path(file_okay=False), default=None)
def bench_append(workdir: str | None):
    """Time and bytes to add 10% new data as a dataset version, vs a full rebuild."""
    import tempfile

    from flywheel.bench_data import bench_append as run

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        click.echo(json.dumps(run(tmp), indent=2))


@bench.command("engine")
@click.option("--iterations", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--clips", type=click.IntRange(min=1), default=24, show_default=True, help="Clips uploaded per iteration.")
@click.option("--label-budget", type=click.IntRange(min=1), default=48, show_default=True)
@click.option("--width", type=click.IntRange(min=4), default=8, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default=None)
def bench_engine(iterations: int, clips: int, label_budget: int, width: int, epochs: int, seed: int, workdir: str | None):
    """Engine (shadow mode + active selection + auto labels) vs random uploads and labels, same label budget."""
    import tempfile

    from flywheel.bench_engine import bench_engine as run

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = run(tmp, iterations=iterations, clips_per_iteration=clips, label_budget=label_budget, seed=seed,
                  width=width, epochs=epochs)  # fmt: skip
    click.echo(json.dumps(out, indent=2, default=str))


@bench.command("cycle")
@click.option("--clips", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=2, show_default=True)
@click.pass_obj
def bench_cycle(obj: Ctx, clips: int, iterations: int):
    """Latency from landing to deployed, per stage, at demo size, in a fresh temporary FLYWHEEL_HOME."""
    import tempfile
    import time

    from flywheel.sim import simulate as run_sim

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FLYWHEEL_HOME"] = tmp
        os.environ.pop("DAGSTER_HOME", None)
        fresh = Ctx(obj.config, {**obj.overrides, "store.root": tmp})
        for i in range(iterations):
            run_sim(fresh.store(), fresh.settings, clips=clips, seed=i)
            t0 = time.perf_counter()
            summary = run_iteration(fresh)
            total = time.perf_counter() - t0
            instance = fresh.instance()
            ingest_runs = [r for r in instance.get_runs() if r.job_name == "ingest_batch"]
            steps = {**_step_seconds(instance, ingest_runs[0].run_id), **_step_seconds(instance, summary["run_id"])}
            train_s = steps.get("challenger", 0.0)
            rows.append({"iteration": i + 1, "total_s": round(total, 2), "steps_s": steps,
                         "outside_training_share": round(1 - train_s / total, 3),
                         "gate_passed": summary["gate_passed"], "dataset_rows": summary["frames"]})  # fmt: skip
    click.echo(json.dumps(rows, indent=2))


def _step_seconds(instance, run_id: str) -> dict[str, float]:
    """Wall seconds of each step of a run, from its STEP_START / STEP_SUCCESS|FAILURE events."""
    start, out = {}, {}
    for e in instance.all_logs(run_id):
        ev = e.dagster_event
        if ev is None or not ev.step_key:
            continue
        if ev.event_type_value == "STEP_START":
            start[ev.step_key] = e.timestamp
        elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in start:
            out[ev.step_key] = round(e.timestamp - start[ev.step_key], 2)
    return out


if __name__ == "__main__":
    main()
