"""What keeps concurrent work safe in production: the run queue and content-derived batch ids."""

import threading

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from flywheel.config import load_settings
from flywheel.definitions import build_definitions
from flywheel.ingest import claimed, commit_batch, list_batches, plan_batch
from flywheel.sim import simulate
from flywheel.store import open_store
from tests.integration.conftest import PRODUCTION

pytestmark = pytest.mark.integration


@pytest.fixture
def queued_instance(dagster_home):
    """The production instance (production/dagster.yaml on PostgreSQL) with a launcher that only records.

    Everything but the launcher is the profile's: the daemon's own dequeue logic decides.
    """
    config = yaml.safe_load((PRODUCTION / "dagster.yaml").read_text())
    config["run_launcher"] = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.get() as instance:
        yield instance


def _submit(instance, job: dg.JobDefinition, n: int, tags: dict | None = None) -> list[str]:
    """`n` queued runs of `job` with its own tags, as the webserver or a sensor submits them."""
    origin = RemoteRepositoryOrigin(
        RegisteredCodeLocationOrigin("flywheel"), "__repository__"
    ).get_job_origin(job.name)
    runs = [
        instance.create_run_for_job(
            job,
            tags={**job.tags, **(tags or {})},
            status=dg.DagsterRunStatus.QUEUED,
            remote_job_origin=origin,
        )  # fmt: skip
        for _ in range(n)
    ]
    return [r.run_id for r in runs]


def _dequeue(instance, daemon) -> set[str]:
    """One daemon iteration; the run ids the launcher has been asked to start so far."""
    with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as ctx:
        list(daemon.run_iteration(ctx))
    return {r.run_id for r in instance.run_launcher.queue()}


def test_run_queue_starts_one_training_run_at_a_time(queued_instance, flywheel_home):
    defs = build_definitions(load_settings())
    train, ingest = defs.resolve_job_def("train_and_deploy"), defs.resolve_job_def("ingest_batch")
    assert train.tags.get("flywheel/kind") == "training"  # the tag the queue limits
    training = _submit(queued_instance, train, 2)
    ingests = _submit(queued_instance, ingest, 2, tags={"dagster/partition": "b1"})

    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    launched = _dequeue(queued_instance, daemon)
    assert set(ingests) <= launched  # ingest runs are not held back by training
    assert len(launched & set(training)) == 1
    first = (launched & set(training)).pop()
    assert _dequeue(queued_instance, daemon) & set(training) == {first}  # still one, while it runs

    # the first training run ends: the second may start
    queued_instance.report_dagster_event(
        DagsterEvent(DagsterEventType.RUN_SUCCESS.value, job_name=train.name), run_id=first
    )
    assert _dequeue(queued_instance, daemon) & set(training) == set(training)


def test_concurrent_sensor_ticks_commit_one_batch(prod_config, pg_instance, flywheel_home):
    """Two evaluations of the fresh-data sensor at once (say the daemon and `flywheel ingest`)."""
    config = prod_config(**{"sensor.min_clips": 3})
    settings = load_settings(config)
    store = open_store(settings.store_root, endpoint_url=settings.store.endpoint_url)
    simulate(store, settings, clips=6, seed=7)

    # The worst interleaving, step by step: both plan before either commits.
    a = plan_batch(store, min_clips=3, max_clips=100)
    b = plan_batch(store, min_clips=3, max_clips=100)
    assert a == b
    assert commit_batch(store, a) == commit_batch(store, b)
    assert [m["batch_id"] for m in list_batches(store)] == [a.batch_id]
    assert plan_batch(store, min_clips=1, max_clips=100) is None

    # The real sensor, two ticks at once, on the next upload.
    simulate(store, settings, clips=6, seed=8)
    defs = build_definitions(settings, config_path=str(config))
    sensor = defs.resolve_sensor_def("fresh_fleet_data")
    barrier, results = threading.Barrier(2), []

    def tick():
        with dg.build_sensor_context(instance=pg_instance, resources=defs.resources) as ctx:
            barrier.wait()
            results.append(sensor(ctx))

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2
    for r in results:  # applied as the daemon applies them
        for req in r.dynamic_partitions_requests:
            pg_instance.add_dynamic_partitions("fleet_batches", list(req.partition_keys))
    batches = [m["batch_id"] for m in list_batches(store)]
    requested = {rr.run_key for r in results for rr in r.run_requests} - {a.batch_id}
    # one new batch; both ticks ask for the same run key, which Dagster runs once
    assert len(batches) == 2 and requested == set(batches) - {a.batch_id}
    assert sorted(pg_instance.get_dynamic_partitions("fleet_batches")) == sorted(batches)
    keys, _ = claimed(store)
    landing = [o.key for o in store.list("landing/") if o.key.endswith(".mcap")]
    assert sorted(keys) == sorted(landing)  # every clip in exactly one batch
    held = [c["key"] for m in list_batches(store) for c in m["clips"] + m["duplicates"]]
    assert len(held) == len(set(held))


def test_production_instance_config_is_the_profile(dagster_home):
    """production/dagster.yaml loads as a PostgreSQL instance with the queued coordinator and limits."""
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        queue = instance.get_concurrency_config().run_queue_config
        assert {
            "key": "flywheel/kind",
            "value": "training",
            "limit": 1,
        } in queue.tag_concurrency_limits
