"""Ingest steps as Celery tasks: two fleet batches at once on two workers, Dagster on PostgreSQL."""

import json
import os
import subprocess
import uuid

import dagster as dg
import pytest

from flywheel.config import load_settings
from flywheel.ingest import commit_batch, plan_batch
from flywheel.layout import augmented_key, frames_key, labels_key
from flywheel.sim import simulate
from flywheel.store import open_store
from tests.integration.conftest import PRODUCTION, REPO, VENV_BIN, celery_backend, celery_workers

pytestmark = pytest.mark.integration


def _commit_batches(store, settings, n: int) -> list[str]:
    out = []
    for seed in range(n):
        simulate(store, settings, clips=4, seed=100 + seed)
        plan = plan_batch(store, min_clips=1, max_clips=100)
        commit_batch(store, plan)
        out.append(plan.batch_id)
    return out


def _celery_workers_of(instance, run_id: str) -> dict[str, str]:
    """step key -> the Celery worker that executed it, from the run's engine events."""
    out = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        md = event.event_specific_data.metadata if event.event_specific_data else {}
        if "Celery worker" in md:
            out[event.step_key] = md["Celery worker"].value
    return out


def test_two_batches_ingest_at_once_on_two_celery_workers(
    prod_config, dagster_home, pg_instance, broker_url, tmp_path, monkeypatch
):
    config = prod_config()
    settings = load_settings(config)
    store = open_store(settings.store_root, endpoint_url=settings.store.endpoint_url)
    batches = _commit_batches(store, settings, 2)
    pg_instance.add_dynamic_partitions("fleet_batches", batches)

    queue = f"fw-{uuid.uuid4().hex[:8]}"  # our own queue: other sessions on the broker never take our tasks
    monkeypatch.setenv("FLYWHEEL_EXECUTOR", "celery")
    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", broker_url)
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND", celery_backend(broker_url))
    monkeypatch.setenv("FLYWHEEL_CELERY_QUEUE", queue)
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    # Each run in its own process, as the run launcher starts them; its steps go to the workers.
    cmd = [str(VENV_BIN / "dagster"), "job", "execute", "-f", str(PRODUCTION / "definitions.py"), "-a", "defs",
           "-d", str(REPO), "-j", "ingest_batch"]  # fmt: skip
    with celery_workers(2, queue=queue, env=env, logdir=tmp_path) as workers:
        runs = [
            subprocess.Popen(
                [*cmd, "--tags", json.dumps({"dagster/partition": b})],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for b in batches
        ]
        outputs = [p.communicate(timeout=300)[0] for p in runs]
    assert all(p.returncode == 0 for p in runs), "\n".join(o[-3000:] for o in outputs)
    results = {
        r.tags["dagster/partition"]: (r.status == dg.DagsterRunStatus.SUCCESS, r.run_id)
        for r in pg_instance.get_runs(dg.RunsFilter(job_name="ingest_batch"))
    }
    assert set(results) == set(batches) and all(ok for ok, _ in results.values()), results
    used = {}
    for batch_id, (_, run_id) in results.items():
        steps = _celery_workers_of(pg_instance, run_id)
        # every step of the run went through a worker, none ran in the run's own process
        assert set(steps) == {"raw_clips", "frames", "labels", "augmented"}, steps
        used[batch_id] = set(steps.values())
    assert set().union(*used.values()) == set(workers)  # both workers took steps

    # each partition wrote its own outputs, and they hold disjoint clips
    clips = {}
    for batch_id in batches:
        for key in (frames_key(batch_id), labels_key(batch_id), augmented_key(batch_id)):
            assert store.exists(key), key
        frames = (
            store.read_parquet(frames_key(batch_id), columns=["clip_id"])
            .column("clip_id")
            .to_pylist()
        )
        clips[batch_id] = set(frames)
        manifest = store.read_json(f"batches/{batch_id}.json")
        assert clips[batch_id] == {
            c["key"].rsplit("/", 1)[-1].removesuffix(".mcap") for c in manifest["clips"]
        }
    assert not clips[batches[0]] & clips[batches[1]]
    # the runs are recorded in the PostgreSQL instance, one per partition
    assert len(pg_instance.get_runs(dg.RunsFilter(job_name="ingest_batch"))) == 2
