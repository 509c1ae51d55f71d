"""The fresh-data sensor: new clips in landing become a fleet batch and its ingest run."""


import json

import dagster as dg

from flywheel import ingest
from jobs import ingest_batch
from resources import SettingsResource, StoreResource
from resources.partitions import fleet_batches


@dg.sensor(
    job=ingest_batch,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Counts new clips in landing; at the threshold, commits a fleet batch and requests its ingest.",
)
def fresh_fleet_data(
    context: dg.SensorEvaluationContext, settings: SettingsResource, store: StoreResource
) -> dg.SensorResult | dg.SkipReason:
    s, st = settings.load(), store.open()
    cursor = json.loads(context.cursor) if context.cursor else {"batches": 0, "pending": 0}
    # A batch committed by a tick whose result was lost still gets its partition and run.
    known = set(context.instance.get_dynamic_partitions(fleet_batches.name))
    orphans = [m["batch_id"] for m in ingest.list_batches(st) if m["batch_id"] not in known]
    plan = ingest.plan_batch(st, min_clips=s.sensor.min_clips, max_clips=s.sensor.max_clips)
    new = orphans + ([ingest.commit_batch(st, plan)["batch_id"]] if plan else [])
    if not new:
        pending = len(ingest.pending_clips(st))
        context.update_cursor(json.dumps({**cursor, "pending": pending}))
        return dg.SkipReason(f"{pending} new clip(s) in landing; a batch needs {s.sensor.min_clips}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=b, partition_key=b) for b in new],
        dynamic_partitions_requests=[fleet_batches.build_add_request(new)],
        cursor=json.dumps({"batches": cursor["batches"] + len(new), "pending": 0, "last_batch": new[-1]}),
    )
