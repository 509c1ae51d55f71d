"""The ingest job: one fleet batch through raw_clips, frames, labels and augmented; the relabel job:
labels and augmented again, when human answers arrived after the batch was labeled."""

import dagster as dg

from assets.dataset import augmented, labels
from assets.ingest import frames, raw_clips
from resources.partitions import fleet_batches

ingest_batch = dg.define_asset_job(
    "ingest_batch",
    selection=dg.AssetSelection.assets(raw_clips, frames, labels, augmented),
    partitions_def=fleet_batches,
    description=(
        "One fleet batch: validate clips (quarantining bad ones), "
        "write frames, labels, augmented rows."
    ),
)

relabel_batch = dg.define_asset_job(
    "relabel_batch",
    selection=dg.AssetSelection.assets(labels, augmented),
    partitions_def=fleet_batches,
    description=(
        "One fleet batch's labels and augmented rows again, with human answers that came after "
        "it was labeled; the next dataset version revises the batch (older versions stay)."
    ),
)
