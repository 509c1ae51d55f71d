"""Partitions: one dynamic partition per fleet batch, one per mining campaign."""

import dagster as dg

# One partition per fleet batch; the fresh-data sensor adds them.
fleet_batches = dg.DynamicPartitionsDefinition(name="fleet_batches")

# One partition per mining campaign (flywheel campaign start, or added in the UI).
mining_campaigns = dg.DynamicPartitionsDefinition(name="campaigns")
