"""Jobs and schedules."""

import dagster as dg

from assets.ingest import frames, raw_clips
from assets.partitions import fleet_batches

ingest_batch = dg.define_asset_job(
    "ingest_batch",
    selection=dg.AssetSelection.assets(raw_clips, frames),
    partitions_def=fleet_batches,
    description="Validate one fleet batch's clips (quarantining bad ones) and write its frames.",
)
