"""Jobs and schedules."""

import dagster as dg

from assets.dataset import augmented, labels, training_dataset
from assets.ingest import frames, raw_clips
from assets.model import challenger, deployed, evaluation
from assets.partitions import fleet_batches

TRAINING_TAGS = {"flywheel/kind": "training"}  # dagster.yaml's run queue lets one such run at a time

ingest_batch = dg.define_asset_job(
    "ingest_batch",
    selection=dg.AssetSelection.assets(raw_clips, frames, labels, augmented),
    partitions_def=fleet_batches,
    description="One fleet batch: validate clips (quarantining bad ones), write frames, labels, augmented rows.",
)

train_and_deploy = dg.define_asset_job(
    "train_and_deploy",
    selection=dg.AssetSelection.assets(training_dataset, challenger, evaluation, deployed),
    tags=TRAINING_TAGS,
    description="New dataset version, train the challenger, evaluate and gate it, deploy it if it passes.",
)


def nightly_schedule(cron: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="nightly_iteration",
        job=train_and_deploy,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="A full iteration every night, even when fewer new frames than the threshold wait.",
    )
