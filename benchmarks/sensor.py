"""Sensor benchmark: ticks of `fresh_fleet_data` with 10k and 100k clips waiting in landing on S3.

moto's S3 server on 127.0.0.1 (in memory) holds the store. For each size a fresh bucket gets that
many tiny `.mcap` objects from a thread pool: not valid clips, which a tick does not need (it lists
them and hashes the ones it batches). Keys spread over 100 vehicles, as the fleet names them. Timed
on the wall clock, max_clips clips a batch, each tick committing one batch:
  landing scan (now): the `fresh_fleet_data` sensor itself on an ephemeral Dagster instance, its
    partition and run applied after each tick as the daemon would; its first tick (no cursor),
    then steady ticks resuming from the cursor;
  full listing (before): one tick's store work as the sensor did it before the scan, all of
    landing and claims/ listed: `list_batches`, `plan_batch` without a scan, `commit_batch`,
    `pending_clips` (still the code paths of `flywheel status`). Run after the scan's ticks.
  idle (below the threshold): then every landing key but `min_clips - 1` scattered ones gets a claim,
    as if ingested, and one tick from the last cursor runs with the page budget
    (`sensor.max_list_pages`, `list_pages`) and one without a bound (before: a whole round).
Each tick also counts its S3 requests by operation. moto sorts every key of the prefix at each
ListObjectsV2 request, so even one page costs O(keys) there; the request counts carry over to S3.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from benchmarks.ingest import machine

RESULTS = Path(__file__).parent / "results" / "sensor_tick.json"
VEHICLES = 100


def bench_sensor(
    *, sizes: tuple[int, ...] = (10_000, 100_000), max_clips: int = 500, min_clips: int = 20,
    steady_ticks: int = 3, threads: int = 8, list_pages: int | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> dict:  # fmt: skip
    """Seconds and S3 requests of sensor ticks at each landing size; one row per size and tick kind."""
    if max_clips * (steady_ticks + 2) > min(sizes):
        raise ValueError(f"sizes {sizes} too small for {steady_ticks + 2} ticks of {max_clips} clips")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(var, "testing")  # moto takes any credentials
    rows = []
    with _moto_server() as endpoint, _s3_requests() as requests:
        for i, n in enumerate(sizes):
            root = f"s3://sensor-bench-{i}/flywheel"
            upload_s = _fill(endpoint, root, n, threads=threads)
            for row in _ticks(endpoint, root, n, requests, min_clips=min_clips, max_clips=max_clips,
                              steady_ticks=steady_ticks, list_pages=list_pages, threads=threads):  # fmt: skip
                row["upload_s"] = round(upload_s, 1)
                rows.append(row)
                if on_row:
                    on_row(row)
    return {"bench": "sensor_tick", "machine": machine(), "max_clips": max_clips, "min_clips": min_clips,
            "list_pages": list_pages, "rows": rows, "markdown": _markdown(rows)}  # fmt: skip


def _ticks(endpoint: str, root: str, n: int, requests: Counter, *, min_clips: int, max_clips: int,
           steady_ticks: int, list_pages: int | None, threads: int) -> Iterator[dict]:  # fmt: skip
    import dagster as dg

    from flywheel import ingest
    from flywheel.store import store_for
    from resources import SettingsResource, StoreResource
    from sensors.fresh_data import fresh_fleet_data

    overrides = {"store.root": root, "store.endpoint_url": endpoint, "sensor.min_clips": min_clips,
                 "sensor.max_clips": max_clips}  # fmt: skip
    if list_pages is not None:
        overrides["sensor.max_list_pages"] = list_pages

    def resources_with(extra: dict) -> dict:
        settings = SettingsResource(overrides={k: json.dumps(v) for k, v in {**overrides, **extra}.items()})
        return {"settings": settings, "store": StoreResource(settings=settings)}

    resources = resources_with({})
    settings = resources["settings"]

    def measured(fn: Callable, *args) -> tuple[float, Counter, object]:
        requests.clear()
        t0 = time.perf_counter()
        out = fn(*args)
        return time.perf_counter() - t0, Counter(requests), out

    def tick(cursor: str | None, res: dict = resources):
        with dg.build_sensor_context(instance=instance, resources=res, cursor=cursor) as ctx:
            return fresh_fleet_data(ctx)

    instance, cursor, steady = dg.DagsterInstance.ephemeral(), None, []
    for t in range(1 + steady_ticks):
        seconds, ops, result = measured(tick, cursor)
        if not isinstance(result, dg.SensorResult):
            raise RuntimeError(f"tick {t + 1} at {n} clips committed no batch: {result}")
        for req in result.run_requests:  # the daemon's part: the partition, a run of it
            instance.add_dynamic_partitions("fleet_batches", [req.partition_key])
            instance.add_run(dg.DagsterRun(job_name="ingest_batch", status=dg.DagsterRunStatus.NOT_STARTED,
                                           tags={"dagster/partition": req.partition_key,
                                                 "dagster/run_key": req.run_key}))  # fmt: skip
        cursor = result.cursor
        row = {"clips": n, "tick": "scan, first tick", "seconds": round(seconds, 3),
               "requests": dict(ops), "cursor": cursor}  # fmt: skip
        if t == 0:
            yield row
        else:
            steady.append(row)
    times = [r["seconds"] for r in steady]  # the requests are the same at each steady tick
    yield {**steady[-1], "tick": f"scan, steady tick (median of {len(times)})",
           "seconds": statistics.median(times), "all_seconds": times}  # fmt: skip

    s = settings.load()

    def full_listing_tick() -> int:
        st = store_for(s)
        ingest.list_batches(st)
        plan = ingest.plan_batch(st, min_clips=min_clips, max_clips=max_clips)
        if plan is None or ingest.commit_batch(st, plan) is None:
            raise RuntimeError(f"the full-listing tick at {n} clips committed no batch")
        return len(ingest.pending_clips(st))

    seconds, ops, pending = measured(full_listing_tick)
    yield {"clips": n, "tick": "full listing (before)", "seconds": round(seconds, 3),
           "requests": dict(ops), "pending": pending}  # fmt: skip

    # Idle: all but min_clips - 1 scattered clips ingested (claimed), below the threshold; the
    # full listing's batch gets its partition and run as the sensor's did, so the tick has none to ask.
    st = store_for(s)
    for m in ingest.list_batches(st):
        if not instance.has_dynamic_partition("fleet_batches", m["batch_id"]):
            instance.add_dynamic_partitions("fleet_batches", [m["batch_id"]])
            instance.add_run(dg.DagsterRun(job_name="ingest_batch", status=dg.DagsterRunStatus.NOT_STARTED,
                                           tags={"dagster/partition": m["batch_id"], "dagster/run_key": m["batch_id"]}))  # fmt: skip
    unclaimed = [o.key for o in ingest.pending_clips(st)]
    new = set(unclaimed[:: max(1, len(unclaimed) // (min_clips - 1))][: min_clips - 1]) if min_clips > 1 else set()
    _claim_all(endpoint, root, [k for k in unclaimed if k not in new], threads=threads)
    budget = s.sensor.max_list_pages
    for label, res in ((f"idle, page budget ({budget} pages)", resources),
                       ("idle, whole round (before)", resources_with({"sensor.max_list_pages": 10**9}))):  # fmt: skip
        seconds, ops, result = measured(tick, cursor, res)
        if not isinstance(result, dg.SkipReason):
            raise RuntimeError(f"the idle tick at {n} clips did not skip: {result}")
        yield {"clips": n, "tick": label, "seconds": round(seconds, 3), "requests": dict(ops),
               "waiting": len(new), "skip": result.skip_message}  # fmt: skip


def _claim_all(endpoint: str, root: str, keys: list[str], *, threads: int) -> None:
    """A claim for each landing key of `keys`, put straight into the bucket (as if ingested)."""
    import boto3
    from botocore.config import Config

    from flywheel import layout

    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(max_pool_connections=threads))  # fmt: skip
    body = json.dumps({"batch_id": "bench-idle"}).encode()

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{layout.claim_key(key)}", Body=body)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, keys, chunksize=256))


def _fill(endpoint: str, root: str, n: int, *, threads: int) -> float:
    """Create the bucket of `root` and put `n` tiny clips under landing/; returns the seconds taken."""
    import boto3
    from botocore.config import Config

    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(max_pool_connections=threads))  # fmt: skip
    client.create_bucket(Bucket=bucket)

    def put(i: int) -> None:
        key = f"{prefix}/landing/veh-{i % VEHICLES:03d}/2026-11-{1 + i // 5000 % 28:02d}/clip-{i:06d}.mcap"
        client.put_object(Bucket=bucket, Key=key, Body=f"clip {i}".encode())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(n), chunksize=256))
    return time.perf_counter() - t0


@contextmanager
def _moto_server() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1 (the venv's `moto_server`); its endpoint URL."""
    from flywheel.training.distributed import free_port

    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe) if exe.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _listens(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port} (exit {proc.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def _s3_requests() -> Iterator[Counter]:
    """Counts of the S3 requests (by operation) of every boto3 client made meanwhile."""
    import boto3

    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    counts: Counter = Counter()

    def count(model, **_) -> None:
        counts[model.name] += 1

    events = boto3.DEFAULT_SESSION.events  # clients made later copy the session's handlers
    events.register("before-call.s3", count, unique_id="bench-sensor-requests")
    try:
        yield counts
    finally:
        events.unregister("before-call.s3", unique_id="bench-sensor-requests")


def _markdown(rows: list[dict]) -> str:
    lines = ["| clips waiting | tick | seconds | ListObjectsV2 | GetObject | PutObject | all requests |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        ops = r["requests"]
        lines.append(f"| {r['clips']:,} | {r['tick']} | {r['seconds']:.2f} | {ops.get('ListObjectsV2', 0)} | "
                     f"{ops.get('GetObject', 0)} | {ops.get('PutObject', 0)} | {sum(ops.values())} |")  # fmt: skip
    return "\n".join(lines)
