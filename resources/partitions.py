"""Partitions: one dynamic partition per fleet batch."""

import dagster as dg

# One partition per fleet batch; the fresh-data sensor adds them.
fleet_batches = dg.DynamicPartitionsDefinition(name="fleet_batches")
