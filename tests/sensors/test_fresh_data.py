import json
import time
from dataclasses import asdict
from types import SimpleNamespace

import dagster as dg
import pytest

from flywheel import ingest, layout, report
from flywheel.ingest import landing
from flywheel.store import open_store
from resources import SettingsResource, StoreResource
from resources.partitions import fleet_batches
from sensors import fresh_data
from sensors.fresh_data import fresh_fleet_data
from tests.conftest import jpeg, make_clip

# Retries: a minute after the first failure, two after the second; the third failed run parks the batch.
RETRIES = {"sensor.ingest_retry_s": "60", "sensor.max_ingest_attempts": "3"}


def _resources(root: str, **overrides: str) -> dict:
    settings = SettingsResource(
        overrides={"sensor.min_clips": "3", "store.root": root, **overrides}
    )
    return {"settings": settings, "store": StoreResource(settings=settings)}


@pytest.fixture
def setup(tmp_path):
    root = str(tmp_path / "store")
    return open_store(root), _resources(root)


@pytest.fixture
def retrying(tmp_path, monkeypatch):
    """A store, resources with RETRIES, and `clock(s)`: from then on the sensor's time is `s` seconds
    after the moment of the call."""
    root = str(tmp_path / "store")

    def clock(seconds: float) -> None:
        then = time.time() + seconds
        monkeypatch.setattr(fresh_data, "time", SimpleNamespace(time=lambda: then))

    return open_store(root), _resources(root, **RETRIES), clock


@dg.op
def raw_clips():
    raise ConnectionError("the link to the store was cut\nsecond line of the error")


@dg.job(name="ingest_batch", partitions_def=fleet_batches)
def failing_ingest():
    """An ingest run of the batch that fails in its first step, as a cut link would make it."""
    raw_clips()


def _fail(instance, batch_id: str, run_key: str) -> None:
    result = failing_ingest.execute_in_process(
        instance=instance,
        partition_key=batch_id,
        tags={"dagster/run_key": run_key},
        raise_on_error=False,
    )
    assert not result.success


def _record_run(instance, batch_id: str) -> None:
    """What the daemon does with a run request: a run of the batch, about to start."""
    instance.add_run(dg.DagsterRun(job_name="ingest_batch", status=dg.DagsterRunStatus.NOT_STARTED,
                                   tags={"dagster/partition": batch_id, "dagster/run_key": batch_id}))  # fmt: skip


def _first_batch(instance, resources) -> str:
    """Tick once at the threshold and apply what the daemon would: the partition."""
    result, _ = _tick(instance, resources)
    [req] = result.run_requests
    instance.add_dynamic_partitions("fleet_batches", [req.partition_key])
    return req.partition_key


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
        _record_run(instance, batch_id)
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


def test_a_failed_ingest_is_retried_after_its_backoff_not_before(retrying):
    store, resources, clock = retrying
    _land(store, 3)
    with dg.instance_for_test() as instance:
        batch_id = _first_batch(instance, resources)
        _fail(instance, batch_id, run_key=batch_id)
        clock(30)  # within the first minute
        early, _ = _tick(instance, resources)
        assert (
            isinstance(early, dg.SkipReason) and "1 batch(es) wait to retry" in early.skip_message
        )
        clock(61)
        retry, _ = _tick(instance, resources)
        assert isinstance(retry, dg.SensorResult)
        assert [(r.run_key, r.partition_key) for r in retry.run_requests] == [
            (f"{batch_id}:retry-1", batch_id)
        ]
        assert not retry.dynamic_partitions_requests  # the partition is there already
        _fail(instance, batch_id, run_key=f"{batch_id}:retry-1")
        clock(100)  # the second wait is two minutes
        assert isinstance(_tick(instance, resources)[0], dg.SkipReason)
        clock(130)
        again, _ = _tick(instance, resources)
        assert [r.run_key for r in again.run_requests] == [f"{batch_id}:retry-2"]


def test_a_batch_that_keeps_failing_is_parked_with_its_error(retrying):
    store, resources, clock = retrying
    _land(store, 3)
    with dg.instance_for_test() as instance:
        batch_id = _first_batch(instance, resources)
        for key in (batch_id, f"{batch_id}:retry-1", f"{batch_id}:retry-2"):
            _fail(instance, batch_id, run_key=key)
        clock(3600)
        parked, _ = _tick(instance, resources)
        assert isinstance(parked, dg.SkipReason) and "1 parked" in parked.skip_message
        record = store.read_json(layout.parked_key(batch_id))
        assert record["failures"] == 3
        assert record["error"] == "raw_clips: ConnectionError: the link to the store was cut"
        clock(10 * 3600)
        assert isinstance(_tick(instance, resources)[0], dg.SkipReason)  # never requested again
        assert len(instance.get_runs()) == 3
    status = report.status(store, resources["settings"].load())
    assert status["parked"] == [{"batch_id": batch_id, "failures": 3, "error": record["error"],
                                 "last_run_id": record["last_run_id"], "parked_at": record["parked_at"]}]  # fmt: skip


def test_a_batch_whose_run_never_started_is_requested_again(setup):
    """A command killed after it added the partition, before it started the run."""
    store, resources = setup
    _land(store, 3)
    with dg.instance_for_test() as instance:
        batch_id = _first_batch(instance, resources)
        again, _ = _tick(instance, resources)
        assert isinstance(again, dg.SensorResult)
        assert [r.run_key for r in again.run_requests] == [batch_id]


def test_the_cursor_counts_the_batches_in_the_store_whoever_committed_them(setup):
    """`flywheel ingest` commits batches without the daemon's sensor: its next tick's cursor says what
    the store holds, not what its own ticks did (it said 0 batches after five from the command line)."""
    store, resources = setup
    made = []
    for start in (0, 3):  # two batches committed outside the sensor
        _land(store, 3, start)
        plan = ingest.plan_batch(store, min_clips=3, max_clips=10)
        made.append(ingest.commit_batch(store, plan)["batch_id"])
    _land(store, 1, 6)
    stale = json.dumps({"batches": 0, "pending": 0})  # what the daemon's last tick left
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("fleet_batches", made)
        for b in made:  # their ingest ran from the command line
            instance.add_run(dg.DagsterRun(job_name="ingest_batch", status=dg.DagsterRunStatus.SUCCESS,
                                           tags={"dagster/partition": b, "dagster/run_key": b}))  # fmt: skip
        skipped, cursor = _tick(instance, resources, cursor=stale)
        assert isinstance(skipped, dg.SkipReason), skipped
        assert json.loads(cursor) == {"batches": 2, "last_batch": made[-1], "pending": 1,
                                      "pending_exact": True, "landing_after": ""}  # fmt: skip
        _land(store, 2, 7)  # the threshold: this tick commits the third batch
        fired, _ = _tick(instance, resources, cursor=cursor)
        assert isinstance(fired, dg.SensorResult)
        [req] = fired.run_requests
        assert json.loads(fired.cursor) == {"batches": 3, "last_batch": req.partition_key, "pending": 0,
                                            "pending_exact": True,
                                            "landing_after": "landing/v/2026-11-01/c8.mcap"}  # fmt: skip
    assert [m["batch_id"] for m in ingest.list_batches(store)] == [*made, req.partition_key]


# ---------------------------------------------------------------- landing a page at a time (S3)


@pytest.fixture
def s3(s3_endpoint, s3_root, monkeypatch):
    """A store on the S3 test server, the sensor's resources on it (a batch takes 1 to 3 clips),
    pages of 4 keys, and the (prefix, StartAfter) of every ListObjectsV2 request from now on."""
    import boto3

    monkeypatch.setattr(landing, "LIST_PAGE", 4)
    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    requests: list[tuple[str, str]] = []

    def record(params, **_):
        requests.append((params["Prefix"].removeprefix("flywheel/"), params.get("StartAfter", "")))

    events = boto3.DEFAULT_SESSION.events  # clients made later copy the session's handlers
    events.register("before-parameter-build.s3.ListObjectsV2", record, unique_id="count-lists")
    store = open_store(s3_root, endpoint_url=s3_endpoint)
    resources = _resources(s3_root, **{"store.endpoint_url": json.dumps(s3_endpoint),
                                       "sensor.min_clips": "1", "sensor.max_clips": "3"})  # fmt: skip
    yield store, resources, requests
    events.unregister("before-parameter-build.s3.ListObjectsV2", unique_id="count-lists")


def _upload(store, keys):
    for k in keys:
        store.write_bytes(k, make_clip(k))  # the key in the clip: each one's bytes differ


def _batch_tick(instance, store, resources, cursor):
    """A tick that commits a batch, and the daemon's part (its partition, its run); the batch's clips
    and the tick's cursor."""
    result, _ = _tick(instance, resources, cursor)
    assert isinstance(result, dg.SensorResult), result
    [req] = result.run_requests
    instance.add_dynamic_partitions("fleet_batches", [req.partition_key])
    _record_run(instance, req.partition_key)
    return [c["key"] for c in store.read_json(layout.batch_key(req.partition_key))["clips"]], result.cursor


def test_an_upload_that_sorts_before_the_cursor_is_taken_when_the_round_comes_to_it(s3):
    store, resources, _ = s3
    later = [f"landing/v2/2026-11-01/c{i}.mcap" for i in range(6)]
    _upload(store, later)
    early = "landing/v1/2026-11-02/early.mcap"  # a vehicle whose name sorts first uploads late
    with dg.instance_for_test() as instance:
        first, cursor = _batch_tick(instance, store, resources, None)
        assert first == later[:3] and json.loads(cursor)["landing_after"] == later[2]
        _upload(store, [early])
        second, cursor = _batch_tick(instance, store, resources, cursor)
        assert second == later[3:]  # on from the position first, so nothing waits for ever ...
        third, cursor = _batch_tick(instance, store, resources, cursor)
        assert third == [early]  # ... then round to the start: the early key is not lost
        assert json.loads(cursor)["pending"] == 0 and json.loads(cursor)["pending_exact"]
        idle, _ = _tick(instance, resources, cursor)
        assert isinstance(idle, dg.SkipReason) and idle.skip_message.startswith("0 new clip(s)")
    held = [c["key"] for m in ingest.list_batches(store) for c in m["clips"] + m["duplicates"]]
    assert sorted(held) == sorted([*later, early])  # each clip in exactly one batch


def test_a_tick_lists_one_page_of_landing_from_its_cursor_not_all_of_it(s3):
    store, resources, requests = s3
    keys = [f"landing/v{i % 3}/2026-11-01/c{i:02d}.mcap" for i in range(24)]  # six pages of 4
    _upload(store, keys)
    cursor = None
    with dg.instance_for_test() as instance:
        for _ in range(3):
            after = json.loads(cursor)["landing_after"] if cursor else ""
            requests.clear()
            _, cursor = _batch_tick(instance, store, resources, cursor)
            landing = [start for prefix, start in requests if prefix == "landing/"]
            claims = [start for prefix, start in requests if prefix == "claims/"]
            assert landing == [f"flywheel/{after}" if after else ""]  # one page, from the cursor on
            assert len(claims) == 1  # the claims beside that page, not all of claims/
            state = json.loads(cursor)
            assert state["pending"] >= 1 and not state["pending_exact"]  # "at least": not all listed


def test_below_the_threshold_a_big_landing_is_gone_round_over_ticks_a_page_each(s3, s3_root, s3_endpoint):
    """Landing keeps every clip ever ingested: with fewer new clips than a batch needs, a tick lists at
    most `sensor.max_list_pages` pages and carries the new clips it saw to the next, which goes on
    from there; the batch comes once the ticks between them have seen enough, wherever the keys sort."""
    store, _, requests = s3
    resources = _resources(s3_root, **{"store.endpoint_url": json.dumps(s3_endpoint), "sensor.min_clips": "3",
                                       "sensor.max_list_pages": "1"})  # fmt: skip
    old = [f"landing/v{i % 2}/2026-11-01/o{i:02d}.mcap" for i in range(12)]
    _upload(store, old)
    ingest.commit_batch(store, ingest.plan_batch(store, min_clips=12, max_clips=12))  # all claimed
    new = ["landing/v0/2026-11-01/o00x.mcap", "landing/v1/2026-11-01/o05x.mcap"]  # pages 1 and 3 of 4
    _upload(store, new)
    cursor, pages = None, []
    with dg.instance_for_test() as instance:
        [ingested] = [m["batch_id"] for m in ingest.list_batches(store)]
        instance.add_dynamic_partitions("fleet_batches", [ingested])
        instance.add_run(dg.DagsterRun(job_name="ingest_batch", status=dg.DagsterRunStatus.SUCCESS,
                                       tags={"dagster/partition": ingested, "dagster/run_key": ingested}))  # fmt: skip
        for _ in range(4):  # 14 keys, pages of 4: a round takes 4 ticks
            requests.clear()
            skipped, cursor = _tick(instance, resources, cursor)
            assert isinstance(skipped, dg.SkipReason), skipped
            pages.append(len([p for p, _ in requests if p == "landing/"]))
        state = json.loads(cursor)
        assert pages == [1, 1, 1, 1] and not state["pending_exact"]
        assert [k for k, _, _ in state["landing_seen"]] == new and state["pending"] == 2
        late = "landing/v0/2026-10-01/a.mcap"  # sorts before the position: taken when the round comes to it
        _upload(store, [late])
        fired = None
        for _ in range(4):
            result, cursor = _tick(instance, resources, cursor)
            if isinstance(result, dg.SensorResult):
                fired = result
                break
        assert fired is not None, "the round never came to the late upload"
        [req] = fired.run_requests
        assert sorted(c["key"] for c in store.read_json(layout.batch_key(req.partition_key))["clips"]) == sorted([*new, late])
        assert "landing_seen" not in json.loads(fired.cursor)


def _carrying_scan(store) -> tuple[list[str], ingest.LandingScan]:
    """Six clips in landing (pages of 4), and a scan of one page that batched none (6 needed): it
    carries c0..c3 and stops after c3."""
    keys = [f"landing/v/2026-11-01/c{i}.mcap" for i in range(6)]
    _upload(store, keys)
    scan = ingest.LandingScan(store, page=4, max_pages=1)
    assert ingest.plan_batch(store, min_clips=6, max_clips=10, scan=scan) is None
    assert [o.key for o in scan.carry] == keys[:4] and scan.after == keys[3] and not scan.complete
    return keys, scan


def test_a_carried_clip_deleted_since_drops_out(s3):
    store, _, _ = s3
    keys, scan = _carrying_scan(store)
    keys.append("landing/v/2026-11-01/c6.mcap")  # uploaded later
    store.delete(keys[1])
    nxt = ingest.LandingScan(store, after=scan.after, page=4, max_pages=1, seen=scan.carry)
    assert ingest.plan_batch(store, min_clips=6, max_clips=10, scan=nxt) is None  # 6 given out, one gone
    assert nxt.gone == {keys[1]} and [o.key for o in nxt.carry] == [keys[0], *keys[2:6]]  # not carried on
    assert nxt.after == ""  # it listed to the end of landing: the next scan goes on from the start
    _upload(store, keys[6:])
    scan, plan = nxt, None
    for _ in range(3):  # the start's page (all carried), then the rest: c6
        scan = ingest.LandingScan(store, after=scan.after, page=4, max_pages=1, seen=scan.carry)
        if plan := ingest.plan_batch(store, min_clips=6, max_clips=10, scan=scan):
            break
    assert plan is not None and sorted(c["key"] for c in plan.clips) == [keys[0], *keys[2:]]
    assert scan.carry == [] and scan.after == keys[6]


def test_a_carried_clip_another_planner_claimed_is_not_batched_again(s3):
    store, _, _ = s3
    keys, scan = _carrying_scan(store)
    store.write_json(layout.claim_key(keys[1]), {"batch_id": "other"})  # `flywheel ingest` took c1
    # a listing that passes c1 sees its claim: it is not carried on
    again = ingest.LandingScan(store, page=4, max_pages=1, seen=scan.carry)
    assert ingest.plan_batch(store, min_clips=6, max_clips=10, scan=again) is None
    assert again.gone == {keys[1]} and [o.key for o in again.carry] == [keys[0], *keys[2:4]]
    # one that does not pass it batches it with the rest, and the claim keeps it out
    on = ingest.LandingScan(store, after=scan.after, page=4, max_pages=1, seen=scan.carry)
    manifest = ingest.commit_batch(store, ingest.plan_batch(store, min_clips=6, max_clips=10, scan=on))
    assert [c["key"] for c in manifest["clips"]] == [keys[0], *keys[2:]]


def test_a_tick_that_finishes_a_cut_short_commit_keeps_the_carried_clips(s3):
    store, _, _ = s3
    keys, scan = _carrying_scan(store)
    cut = ingest.plan_batch(store, min_clips=1, max_clips=1)  # another planner, killed after its plan record
    store.write_bytes(layout.plan_key(cut.batch_id), json.dumps(asdict(cut)).encode())
    nxt = ingest.LandingScan(store, after=scan.after, page=4, max_pages=1, seen=scan.carry)
    assert ingest.plan_batch(store, min_clips=6, max_clips=10, scan=nxt) == cut  # finished first
    assert nxt.carry == scan.carry and nxt.after == scan.after


def test_a_cursor_that_cannot_be_read_starts_from_the_beginning(setup):
    """A cursor from an older sensor, edited by hand or cut: the tick lists landing from its start and
    carries nothing it cannot use (a landing_seen entry outside landing, or not [key, size, mtime])."""
    store, resources = setup
    _land(store, 2)  # below the threshold of 3
    gone = ["landing/v/2026-11-01/deleted.mcap", 10, 0.0]  # carried, deleted since
    for cursor in ("not json", '["a list"]', json.dumps({"landing_after": "claims/x.mcap"}),
                   json.dumps({"landing_after": "", "landing_seen": "c0"}),
                   json.dumps({"landing_after": "", "landing_seen": [["claims/x.mcap", 1, 0.0]]}),
                   json.dumps({"landing_after": "", "landing_seen": [gone]})):  # fmt: skip
        with dg.instance_for_test() as instance:
            skipped, after = _tick(instance, resources, cursor)
        assert isinstance(skipped, dg.SkipReason), (cursor, skipped)
        assert skipped.skip_message.startswith("2 new clip(s)"), (cursor, skipped.skip_message)
        assert json.loads(after)["pending"] == 2 and "landing_seen" not in json.loads(after)
