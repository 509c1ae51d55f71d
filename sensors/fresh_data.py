"""The fresh-data sensor: new clips in landing become a fleet batch and its ingest run; a failed
ingest runs again with backoff until it succeeds or is parked (`flywheel.recovery`)."""

import json
import time

import dagster as dg

from assets.dataset import augmented
from flywheel import ingest, recovery
from flywheel.store import ObjectInfo
from jobs import ingest_batch
from resources import SettingsResource, StoreResource
from resources.partitions import fleet_batches


@dg.sensor(
    job=ingest_batch,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reads landing a page at a time, from where its last tick stopped; at the threshold, commits "
    "a fleet batch and requests its ingest. Requests a failed ingest again, with backoff, until it "
    "succeeds or is parked.",
)
def fresh_fleet_data(
    context: dg.SensorEvaluationContext, settings: SettingsResource, store: StoreResource
) -> dg.SensorResult | dg.SkipReason:
    s, st = settings.load(), store.open()
    # A batch committed by a tick whose result was lost still gets its partition and run.
    known = set(context.instance.get_dynamic_partitions(fleet_batches.name))
    batches = [m["batch_id"] for m in ingest.list_batches(st)]  # oldest first, whoever made them
    orphans = [b for b in batches if b not in known]
    # Landing a page at a time from where the last tick's batch ended, only as far as one batch needs
    # and at most max_list_pages pages: with 100k clips waiting a tick lists about max_clips keys, and
    # below the threshold a round over a big landing is spread over ticks, the clips seen carried on.
    after, seen = _landing_position(context)
    scan = ingest.LandingScan(st, after=after, seen=seen, max_pages=s.sensor.max_list_pages)
    plan = ingest.plan_batch(st, min_clips=s.sensor.min_clips, max_clips=s.sensor.max_clips, scan=scan,
                             max_clip_bytes=s.ingest.max_clip_bytes)
    # None: other batches claimed every clip of the plan first
    committed = ingest.commit_batch(st, plan) if plan else None
    if committed and committed["batch_id"] not in batches:
        batches.append(committed["batch_id"])
    new = orphans + ([committed["batch_id"]] if committed else [])
    retries, waiting, parked = _retries(context, st, s.sensor, known)
    cursor = _cursor(batches, scan)
    if not new and not retries:
        context.update_cursor(cursor)
        counted = "" if scan.complete else "at least "  # not every page was listed this tick
        why = f"{counted}{scan.waiting} new clip(s) in landing; a batch needs {s.sensor.min_clips}"
        if waiting:
            why += f"; {len(waiting)} batch(es) wait to retry (next in {min(waiting) - time.time():.0f} s)"
        return dg.SkipReason(why + (f"; {parked} parked (flywheel status)" if parked else ""))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=b, partition_key=b) for b in new] + retries,
        dynamic_partitions_requests=[fleet_batches.build_add_request(new)] if new else [],
        cursor=cursor,
    )


def _cursor(batches: list[str], scan: ingest.LandingScan) -> str:
    """What the store holds, for the UI: the committed batches (this sensor's and those that
    `flywheel ingest` or another process committed), the newest one, and the clips waiting in
    landing. Counted from the store at each tick, not kept as a tally, so it cannot drift; but a
    tick that stopped listing once it had a batch saw only some of landing: then `pending` is a
    lower bound and `pending_exact` false. Then where the next tick's scan goes on (`scan.position`)."""
    state = {"batches": len(batches), "last_batch": batches[-1] if batches else None,
             "pending": scan.waiting, "pending_exact": scan.complete, **scan.position()}  # fmt: skip
    return json.dumps(state)


def _landing_position(context: dg.SensorEvaluationContext) -> tuple[str, list[ObjectInfo]]:
    """Where the last tick's scan said to go on ("" and none carried without one). A cursor that
    cannot be read starts from the beginning: any position is safe (a round lists every key), only
    slower."""
    if not context.cursor:
        return "", []
    try:
        return ingest.LandingScan.resume_from(json.loads(context.cursor))
    except ValueError as e:  # not JSON, or no position in it
        context.log.warning(f"cursor {context.cursor!r}: {e}; listing landing from the start")
        return "", []


def ingest_runs(instance: dg.DagsterInstance, batch_id: str) -> list[recovery.IngestRun]:
    """Every ingest run of a batch so far, as plain data (whoever launched it: sensor, UI, CLI)."""
    records = instance.get_run_records(dg.RunsFilter(job_name=ingest_batch.name, tags={"dagster/partition": batch_id}))
    return [
        recovery.IngestRun(
            run_id=r.dagster_run.run_id,
            status=r.dagster_run.status.value,
            updated_at=r.end_time or r.update_timestamp.timestamp(),
            will_retry=r.dagster_run.tags.get("dagster/will_retry") == "true",
        )
        for r in records
    ]


def ingest_states(instance: dg.DagsterInstance, st, sensor, batch_ids: list[str], *, now: float) -> dict[str, dict]:
    """Where each batch's ingest stands, as `flywheel status` shows it: {batch_id: {state, failures,
    retry_at, error}}; state is done, running, waiting (to retry, at retry_at), due (the sensor's next
    tick starts it), parked, or not started."""
    done = instance.get_materialized_partitions(augmented.key)
    parked = recovery.parked_batches(st, batch_ids)
    out = {}
    for b in batch_ids:
        if b in done:
            out[b] = {"state": "done"}
            continue
        if b in parked:
            out[b] = {"state": "parked", "failures": parked[b]["failures"], "error": parked[b]["error"]}
            continue
        runs = ingest_runs(instance, b)
        d = recovery.next_ingest(b, runs, now=now, max_attempts=sensor.max_ingest_attempts, backoff_s=sensor.ingest_retry_s)
        failed = [r for r in runs if r.status in recovery.FAILED]
        error = _error(instance, max(failed, key=lambda r: r.updated_at).run_id) if failed else None
        state = {"wait": "waiting" if d.retry_at is not None else "running", "run": "due" if runs else "not started",
                 "park": "parked", "done": "done"}[d.action]  # fmt: skip
        out[b] = {"state": state, "failures": d.failures, "retry_at": d.retry_at, "error": error}
    return out


def _retries(context, st, sensor, known: set[str]) -> tuple[list[dg.RunRequest], list[float], int]:
    """Run requests for the batches whose ingest needs another run, the times the waiting ones may
    retry, and how many batches are parked. Batches whose last asset is materialized are done."""
    done = context.instance.get_materialized_partitions(augmented.key)
    parked = recovery.parked_batches(st, sorted(known))
    for b in parked.keys() & done:  # an operator's run succeeded
        recovery.unpark(st, b)
    requests, waiting, now = [], [], time.time()
    for b in sorted(known - done - parked.keys()):
        runs = ingest_runs(context.instance, b)
        limits = {"max_attempts": sensor.max_ingest_attempts, "backoff_s": sensor.ingest_retry_s}
        d = recovery.next_ingest(b, runs, now=now, **limits)
        if d.action == "run":
            requests.append(dg.RunRequest(run_key=d.run_key, partition_key=b))
        elif d.action == "wait" and d.retry_at is not None:
            waiting.append(d.retry_at)
        elif d.action == "park":
            last = max(runs, key=lambda r: r.updated_at).run_id
            error = _error(context.instance, last)
            parked[b] = recovery.park(st, b, failures=d.failures, run_id=last, error=error)
            context.log.warning(f"batch {b} parked after {d.failures} failed ingest runs: {error}")
    return requests, waiting, len(parked.keys() - done)


def _error(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first line of what failed a run: its first failed step's error, else the run's failure."""
    steps = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    if steps:
        event = steps[0].dagster_event
        return recovery.failure_line(event.step_key, event.event_specific_data.error)
    runs = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return runs[0].dagster_event.message if runs else "no failure recorded (cancelled?)"
