"""Ingest assets: one fleet batch from landing MCAP clips to frames Parquet."""


from collections import Counter

import dagster as dg

from assets.ui import counts_md, table_md
from flywheel import ingest
from resources import SettingsResource, StoreResource
from resources.partitions import fleet_batches

STORE_RETRY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)


@dg.asset(partitions_def=fleet_batches, group_name="ingest", retry_policy=STORE_RETRY, kinds={"mcap"})
def raw_clips(
    context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource
) -> dg.MaterializeResult:
    """The clips of one fleet batch, each read and checked; bad clips quarantined with a reason."""
    report = ingest.validate_batch(store.open(), context.partition_key, settings.load())
    reasons = Counter(q["reason"] for q in report["quarantined"])
    return dg.MaterializeResult(
        metadata={
            "accepted": len(report["accepted"]),
            "quarantined": len(report["quarantined"]),
            "quarantine_reasons": counts_md(dict(reasons)),
            "quarantined_clips": table_md(report["quarantined"], ["key", "reason", "detail"]),
            "duplicate_uploads": len(report["duplicate_uploads"]),
            "bytes_read": dg.MetadataValue.int(report["bytes"]),
            "seconds": report["seconds"],
        }
    )


@dg.asset(
    partitions_def=fleet_batches, group_name="ingest", deps=[raw_clips], retry_policy=STORE_RETRY,
    kinds={"parquet"},
)  # fmt: skip
def frames(
    context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource
) -> dg.MaterializeResult:
    """Camera frames of one fleet batch's accepted clips, as Parquet (images kept as uploaded)."""
    st = store.open()
    summary = ingest.write_frames(st, context.partition_key, settings.load())
    return dg.MaterializeResult(
        metadata={
            "frames": summary["frames"],
            "clips": summary["clips"],
            "with_ground_truth": summary["with_ground_truth"],
            "with_boxes": summary["with_boxes"],
            "bytes": dg.MetadataValue.int(summary["bytes"]),
            "uri": dg.MetadataValue.path(st.uri(summary["key"])),
            "per_condition": counts_md(summary["per_condition"]),
            "per_trigger": counts_md(summary["per_trigger"]),
            "per_camera": counts_md(summary["per_camera"]),
            "frames_per_s": round(summary["frames"] / max(summary["seconds"], 1e-9), 1),
        }
    )
