"""The training iteration: the train_and_deploy job, its tags and the nightly schedule."""

import dagster as dg

from assets.dataset import training_dataset
from assets.model import challenger, deployed, evaluation

# dagster.yaml's run queue lets one such run at a time
TRAINING_TAGS = {"flywheel/kind": "training"}

train_and_deploy = dg.define_asset_job(
    "train_and_deploy",
    selection=dg.AssetSelection.assets(training_dataset, challenger, evaluation, deployed),
    tags=TRAINING_TAGS,
    description=(
        "New dataset version, train the challenger, evaluate and gate it, deploy it if it passes."
    ),
)


def nightly_schedule(cron: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="nightly_iteration",
        job=train_and_deploy,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "A full iteration every night, even when fewer new frames than the threshold wait."
        ),
    )
