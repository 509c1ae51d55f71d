import json

import dagster as dg
import pytest

from flywheel import ingest
from flywheel.store import open_store
from resources import SettingsResource, StoreResource
from sensors.fresh_data import fresh_fleet_data
from tests.conftest import jpeg, make_clip


@pytest.fixture
def setup(tmp_path):
    root = str(tmp_path / "store")
    settings = SettingsResource(overrides={"sensor.min_clips": "3", "store.root": json.dumps(root)})
    resources = {"settings": settings, "store": StoreResource(settings=settings)}
    return open_store(root), resources


def _land(store, n, start=0):
    for i in range(start, start + n):
        store.write_bytes(f"landing/v/2026-11-01/c{i}.mcap", make_clip(f"c{i}", image=jpeg(i)))


def _tick(instance, resources, cursor=None):
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
        return fresh_fleet_data(ctx), ctx.cursor


def test_below_threshold_skips(setup):
    store, resources = setup
    _land(store, 2)
    with dg.instance_for_test() as instance:
        result, cursor = _tick(instance, resources)
    assert isinstance(result, dg.SkipReason)
    assert "2 new clip(s)" in result.skip_message
    assert json.loads(cursor)["pending"] == 2
    assert ingest.list_batches(store) == []


def test_threshold_adds_one_partition_and_one_run_then_nothing(setup):
    store, resources = setup
    _land(store, 3)
    with dg.instance_for_test() as instance:
        result, cursor = _tick(instance, resources)
        assert isinstance(result, dg.SensorResult)
        assert len(result.run_requests) == 1
        [req] = result.dynamic_partitions_requests
        assert list(req.partition_keys) == [result.run_requests[0].partition_key]
        assert result.run_requests[0].run_key == result.run_requests[0].partition_key
        batch_id = result.run_requests[0].partition_key
        assert store.read_json(f"batches/{batch_id}.json")["clips"][0]["key"].endswith("c0.mcap")
        # what the daemon does with the request (a direct call does not apply it)
        instance.add_dynamic_partitions("fleet_batches", list(req.partition_keys))
        second, _ = _tick(instance, resources, cursor=result.cursor)
        assert isinstance(second, dg.SkipReason)
        assert json.loads(result.cursor)["batches"] == 1


def test_a_lost_tick_is_recovered(setup):
    """A batch committed to the store whose partition was never added is requested again."""
    store, resources = setup
    _land(store, 3)
    with dg.instance_for_test() as instance:
        first, _ = _tick(instance, resources)  # result dropped: no partition added
        again, _ = _tick(instance, resources)
        assert isinstance(again, dg.SensorResult)
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert len(ingest.list_batches(store)) == 1
