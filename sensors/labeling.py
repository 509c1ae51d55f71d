"""The Label Studio sensor: queued frames go to the project, settled answers come back and relabel
their batch (flywheel/labeling/labelstudio_sync.py). Without a configured server it skips: the queue is then
the file exchange under labeling/."""

import dagster as dg

from flywheel import lazy
from jobs import relabel_batch
from resources import SettingsResource, StoreResource
from resources.partitions import fleet_batches

labelstudio_sync = lazy.module("flywheel.labeling.labelstudio_sync")  # the queue's scoring pulls in torch


@dg.sensor(
    job=relabel_batch,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Imports queued frames into Label Studio; when a batch's answers settle, writes them to "
    "labeling/done/ and relabels that batch (its next dataset version holds them).",
)
def label_studio_answers(
    context: dg.SensorEvaluationContext, settings: SettingsResource, store: StoreResource
) -> dg.SensorResult | dg.SkipReason:
    s = settings.load()
    try:
        sync = labelstudio_sync.from_settings(s)
    except ValueError as e:  # a server but no token
        return _trouble(context, str(e))
    if sync is None:
        return dg.SkipReason("no Label Studio set (labelstudio.url or LABEL_STUDIO_URL): the queue is the files "
                             "under labeling/")  # fmt: skip
    st = store.open()
    try:
        pushed, written = sync.push(st), sync.pull(st)
    except Exception as e:  # down or refusing: one line, not a stack trace in every tick
        line = labelstudio_sync.trouble(e, sync.url)
        if line is None:
            raise
        return _trouble(context, line)
    known = set(context.instance.get_dynamic_partitions(fleet_batches.name))
    # every batch whose answers its labels do not hold yet, written by this tick or by one whose result was lost
    todo = [r for r in labelstudio_sync.unfolded(st, s.classes) if r.batch_id in known]
    said = f"{sum(pushed.values())} task(s) imported, {len(written)} batch export(s) written"
    if not todo:
        return dg.SkipReason(f"{said}; every answer is in its batch's labels")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"{r.batch_id}:answers:{r.sha256[:16]}", partition_key=r.batch_id,
                          tags={"flywheel/trigger": "label-studio-answers", "flywheel/answers": str(r.tasks)})
            for r in todo
        ],  # fmt: skip
    )


def _trouble(context: dg.SensorEvaluationContext, line: str) -> dg.SkipReason:
    """The tick says what is wrong in one line (and logs it); the next tick tries again."""
    context.log.warning(line)
    return dg.SkipReason(f"not synced: {line}; the next tick tries again")
