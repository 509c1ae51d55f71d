"""Scaling benchmarks of the production profile (production/): Celery workers and DDP ranks.

    flywheel bench scale ingest   # 8 batches x 6 clips, 1 vs 2 Celery workers
    flywheel bench scale ddp      # torchrun 1 vs 2 ranks on CPU (gloo)

The ingest benchmark needs RabbitMQ (--broker) and PostgreSQL (--pg), by default on 127.0.0.1.

Ingest: 8 fleet batches committed to a fresh local store, then one `dagster job execute` per
batch, all at once, with their steps on k Celery workers (production/definitions.py,
FLYWHEEL_EXECUTOR=celery) and the Dagster instance (production/dagster.yaml) on a fresh PostgreSQL
database. The figure is the step span: from the first STEP_START to the last STEP_SUCCESS over
all steps of the ingest runs, as the instance's event log stamps them (read through
`DagsterInstance.all_logs`, see benchmarks.steps), so the run processes' start-up is not counted;
efficiency = span(1) / (k * span(k)).
DDP: the same dataset version trained by `torchrun -m flywheel.training.distributed` with 1 and 2 ranks;
images/s is all ranks together (median over epochs after the first).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import yaml

from benchmarks.steps import step_timings

REPO = Path(__file__).resolve().parent.parent
PRODUCTION = REPO / "production"
BIN = Path(sys.executable).parent


def _environment() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "machine": platform.machine(), "load_avg_1m": os.getloadavg()[0]}  # fmt: skip


def _production_file(name: str) -> Path:
    """A file of the production profile; an error names it when it is missing."""
    path = PRODUCTION / name
    if not path.is_file():
        raise FileNotFoundError(f"production profile file not found: {path}")
    return path


def _write_config(workdir: Path, overrides: dict) -> Path:
    """`workdir/flywheel.yaml` holding the dotted `overrides` (e.g. "store.root") as nested keys."""
    data: dict = {}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = workdir / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _commit_batches(config: Path, *, batches: int, clips: int) -> list[str]:
    """Simulate and commit `batches` fleet batches of `clips` clips each; returns their ids."""
    from flywheel.config import load_settings
    from flywheel.ingest import commit_batch, plan_batch
    from flywheel.sim import simulate
    from flywheel.store import open_store

    settings = load_settings(config)
    store = open_store(settings.store_root)
    ids = []
    for i in range(batches):
        simulate(store, settings, clips=clips, seed=1000 + i)
        plan = plan_batch(store, min_clips=1, max_clips=10_000)
        commit_batch(store, plan)
        ids.append(plan.batch_id)
    return ids


# ---------------------------------------------------------------- PostgreSQL, Dagster and Celery


@contextmanager
def _database(pg: str):
    """A fresh PostgreSQL database on server `pg` (its URL), dropped afterwards."""
    import psycopg2

    name = f"fw_bench_{uuid.uuid4().hex[:8]}"
    admin = pg.replace("+psycopg2", "") + "/postgres"

    def sql(statement: str) -> None:
        conn = psycopg2.connect(admin)
        conn.autocommit = True
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()

    sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg}/{name}"
    finally:
        sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _dagster_instance(home: Path, db_url: str):
    """The production Dagster instance in DAGSTER_HOME `home`, its storage on database `db_url`."""
    import dagster as dg

    shutil.copyfile(_production_file("dagster.yaml"), home / "dagster.yaml")
    # production/dagster.yaml reads the storage URL from the environment
    with mock.patch.dict(os.environ, {"DAGSTER_PG_URL": db_url}):
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of `proc`, SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def _workers(k: int, *, queue: str, env: dict, logdir: Path):
    """k dagster-celery workers, one task at a time each, answering a ping before we go on."""
    from celery import Celery

    names = [f"bench{i}-{queue}@{socket.gethostname()}" for i in range(k)]
    celery_yaml = _production_file("celery.yaml")
    procs = []
    try:
        for i, name in enumerate(names):
            cmd = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                   "-y", str(celery_yaml), "-q", queue, "-n", name.split("@")[0], "-l", "WARNING",
                   "--", "--pool=solo", "--without-gossip", "--without-mingle",
                   "--without-heartbeat"]  # fmt: skip
            with open(logdir / f"worker{i}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True))  # fmt: skip
        app, up = Celery(broker=env["DAGSTER_CELERY_BROKER_URL"]), set()
        deadline = time.monotonic() + 180
        while up != set(names):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"celery workers not up; logs in {logdir}")
            for reply in app.control.ping(destination=names, timeout=1.0):
                up |= set(reply)
        yield names
    finally:
        for p in procs:
            _stop(p)


def _execute_ingest_runs(batch_ids: list[str], env: dict) -> float:
    """One `dagster job execute` of ingest_batch per batch, all at once; their wall seconds."""
    cmd = [str(BIN / "dagster"), "job", "execute", "-f", str(_production_file("definitions.py")),
           "-a", "defs", "-d", str(REPO), "-j", "ingest_batch"]  # fmt: skip
    t0 = time.perf_counter()
    runs = [subprocess.Popen([*cmd, "--tags", json.dumps({"dagster/partition": b})], cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for b in batch_ids]  # fmt: skip
    errors = [p.communicate()[1] for p in runs]
    wall = time.perf_counter() - t0
    failed = [
        (b, e[-1500:]) for b, p, e in zip(batch_ids, runs, errors, strict=True) if p.returncode
    ]
    if failed:
        batch, stderr = failed[0]
        raise RuntimeError(f"{len(failed)} ingest run(s) failed; batch {batch}:\n{stderr}")
    return wall


def _step_span(instance) -> tuple[float, int]:
    """Seconds from the first STEP_START to the last STEP_SUCCESS over the steps of every
    ingest_batch run of `instance`, and how many steps succeeded."""
    import dagster as dg

    runs = instance.get_runs(dg.RunsFilter(job_name="ingest_batch"))
    steps = [t for run in runs for t in step_timings(instance, run.run_id).values()]
    succeeded = [t for t in steps if t.succeeded]
    if not succeeded:
        raise RuntimeError(f"no successful step in the {len(runs)} ingest_batch run(s)")
    return max(t.end for t in succeeded) - min(t.start for t in steps), len(succeeded)


def _celery_ingest_once(k: int, *, pg: str, broker: str, batches: int, clips: int) -> dict:
    """`batches` batches of `clips` clips ingested with `k` Celery workers on a fresh instance."""
    from resources.partitions import fleet_batches

    with tempfile.TemporaryDirectory() as tmp, _database(pg) as db:
        work = Path(tmp)
        config = _write_config(work, {"store.root": str(work / "store"), "ingest.workers": 1,
                                      "sim.frames_per_clip": 8})  # fmt: skip
        ids = _commit_batches(config, batches=batches, clips=clips)
        home = work / "dagster"
        home.mkdir()
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": db,
               "FLYWHEEL_CONFIG": str(config), "FLYWHEEL_EXECUTOR": "celery",
               "DAGSTER_CELERY_BROKER_URL": broker, "FLYWHEEL_CELERY_QUEUE": queue,
               "DAGSTER_CELERY_BACKEND": broker if broker.startswith("redis://") else "rpc://",
               "OMP_NUM_THREADS": "1",
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
        with _dagster_instance(home, db) as instance:
            # What the sensor does; it also creates the instance's tables before the runs start.
            instance.add_dynamic_partitions(fleet_batches.name, ids)
            with _workers(k, queue=queue, env=env, logdir=work):
                wall = _execute_ingest_runs(ids, env)
            span, steps = _step_span(instance)
    return {"workers": k, "batches": batches, "clips_per_batch": clips, "steps": steps,
            "step_span_s": round(span, 2), "wall_s_incl_run_startup": round(wall, 2)}  # fmt: skip


def bench_celery_ingest(
    *, pg: str, broker: str, batches: int = 8, clips: int = 6, workers=(1, 2)
) -> dict:
    """Ingest `batches` batches with each worker count in `workers`; step spans and efficiency."""
    rows = [_celery_ingest_once(k, pg=pg, broker=broker, batches=batches, clips=clips)
            for k in workers]  # fmt: skip
    base = rows[0]["step_span_s"] * rows[0]["workers"]
    for r in rows:
        r["speedup"] = round(rows[0]["step_span_s"] / r["step_span_s"], 2)
        r["efficiency"] = round(base / (r["workers"] * r["step_span_s"]), 2)
    return {"bench": "celery_ingest", "environment": _environment(), "results": rows}


# ---------------------------------------------------------------- DDP


def bench_ddp(*, clips: int = 96, epochs: int = 4, nprocs=(1, 2)) -> dict:
    """Training throughput with 1 and 2 torchrun ranks on the same dataset version (CPU, gloo)."""
    from flywheel import stages
    from flywheel.config import load_settings
    from flywheel.ingest import validate_batch, write_frames
    from flywheel.store import open_store
    from flywheel.tracking import Tracker
    from flywheel.training.distributed import train_challenger_torchrun

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tracking = f"sqlite:///{work / 'mlflow.db'}"
        config = _write_config(work, {"store.root": str(work / "store"), "train.device": "cpu",
                                      "train.epochs": epochs, "dataset.golden_size": 0,
                                      "mlflow.tracking_uri": tracking})  # fmt: skip
        settings = load_settings(config)
        # Created (and migrated) here: ranks that each open a fresh SQLite store race on its schema.
        Tracker(tracking, experiment=settings.mlflow.experiment,
                model_name=settings.mlflow.model_name,
                artifact_root=work / "artifacts")  # fmt: skip
        store = open_store(settings.store_root)
        for batch_id in _commit_batches(config, batches=1, clips=clips):
            validate_batch(store, batch_id, settings)
            write_frames(store, batch_id, settings)
            stages.label_batch(store, settings, batch_id)
            stages.augment_batch(store, settings, batch_id)
        manifest, _ = stages.build_dataset_version(store, settings)
        for n in nprocs:
            env = {
                "FLYWHEEL_HOME": str(work / f"home-{n}"),
                "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n)),
            }
            t0 = time.perf_counter()
            out = train_challenger_torchrun(nproc=n, workdir=work, config_path=str(config), env=env)
            wall = time.perf_counter() - t0
            speeds = [h["images_per_s"] for h in out["history"][1:]] or [
                out["history"][0]["images_per_s"]
            ]
            rows.append({"ranks": n, "dataset_version": manifest["version"],
                         "train_rows_per_rank": out["train_rows"], "epochs": epochs,
                         "images_per_s": round(statistics.median(speeds), 1),
                         "final_val_acc": out["history"][-1].get("val_acc"),
                         "wall_s_incl_startup": round(wall, 1),
                         "batch_size_per_rank": settings.train.batch_size,
                         "image_size": settings.image_size})  # fmt: skip
    for r in rows:
        r["speedup"] = round(r["images_per_s"] / rows[0]["images_per_s"], 2)
        r["efficiency"] = round(r["speedup"] / r["ranks"] * rows[0]["ranks"], 2)
    return {"bench": "ddp_cpu", "environment": _environment(), "results": rows}
