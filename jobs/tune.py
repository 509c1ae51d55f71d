"""The hyperparameter search: the tune job and its weekly schedule."""

import dagster as dg

from assets.model import trainer_config
from jobs.iteration import TRAINING_TAGS

# Tagged as training: it trains a model per trial, so the run queue keeps it apart from
# train_and_deploy (dagster.yaml: one training run at a time).
tune_job = dg.define_asset_job(
    "tune",
    selection=dg.AssetSelection.assets(trainer_config),
    tags=TRAINING_TAGS,
    description=(
        "Optuna search over the trainer's recipe on the latest dataset version; "
        "the next challenger trains with the best values."
    ),
)


def tune_schedule(cron: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_tune",
        job=tune_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="A tune run every week (tune.cron), on the budget of tune.trials and "
        "tune.minutes.",
    )
