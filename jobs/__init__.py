"""Jobs and schedules.

- `jobs.ingest`: `ingest_batch`, one fleet batch (partition) from raw clips to augmented rows;
  `relabel_batch`, its labels and augmented rows again with late human answers.
- `jobs.iteration`: `train_and_deploy`, its `TRAINING_TAGS` (one such run at a time) and
  `nightly_schedule`.
- `jobs.tune`: `tune_job` (the `tune` job: the `trainer_config` asset) and `tune_schedule`.
- `jobs.campaigns`: `mine` (the `mining_campaign` job), one mining campaign (partition).
"""

from jobs.campaigns import mine
from jobs.ingest import ingest_batch, relabel_batch
from jobs.iteration import TRAINING_TAGS, nightly_schedule, train_and_deploy
from jobs.tune import tune_job, tune_schedule

__all__ = [
    "TRAINING_TAGS",
    "ingest_batch",
    "mine",
    "nightly_schedule",
    "relabel_batch",
    "train_and_deploy",
    "tune_job",
    "tune_schedule",
]
