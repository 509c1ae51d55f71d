"""Dataset assets: labels and augmented rows per fleet batch, and the versioned training dataset."""

import dagster as dg

from assets.ingest import STORE_RETRY, frames
from assets.ui import counts_md, png_md, table_md
from flywheel import lazy
from flywheel.data.diff import diff_versions
from flywheel.data.diff import markdown as diff_markdown
from resources import SettingsResource, StoreResource
from resources.partitions import fleet_batches

# torch, albumentations, matplotlib and the rest of the stages, when a step uses them
stages, plots = lazy.module("flywheel.stages"), lazy.module("flywheel.plots")

LABEL_ERRORS = dg.AssetCheckSpec("likely_label_errors", asset="labels", blocking=False,
                                description="Confident learning: the champion's probabilities blended with a cross-validated model of the batch's own labels")  # fmt: skip


@dg.asset(partitions_def=fleet_batches, group_name="dataset", deps=[frames], retry_policy=STORE_RETRY,
          kinds={"parquet"}, check_specs=[LABEL_ERRORS])  # fmt: skip
def labels(context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource):
    """The label of each frame of a batch: human (Label Studio) > ground truth > auto, with confidence."""
    st, s = store.open(), settings.load()
    stats = stages.label_batch(st, s, context.partition_key)
    if s.task == "detection":
        yield dg.MaterializeResult(metadata=_box_labels_metadata(stats, st))
        yield dg.AssetCheckResult(check_name="likely_label_errors", passed=True, severity=dg.AssetCheckSeverity.WARN,
                                  description="not checked: confident learning judges one class per frame, not box sets")  # fmt: skip
        return
    found = stats["label_errors"]
    yield dg.MaterializeResult(metadata=_labels_metadata(stats, st, s.classes))
    yield dg.AssetCheckResult(
        check_name="likely_label_errors",
        passed=not found["errors"],
        severity=dg.AssetCheckSeverity.WARN,
        description=found.get("note") or f"{found.get('flagged', 0)} of {found['checked']} labels look wrong",
        metadata={"checked": found["checked"], "frames": table_md(found["errors"])},
    )


def _labels_metadata(stats: dict, st, classes: list[str]) -> dict:
    """What the UI shows of a batch's labels: where they came from, what went to people, per class."""
    auto = stats.get("auto_accuracy") or {}
    return {
        "queued_for_humans": stats["queued"],
        "auto_label_accuracy": auto.get("accuracy"),
        "auto_labels_compared": auto.get("compared", 0),
        "labeled": stats["labeled"],
        "champion scored on": stats["scored_on"] or "no champion deployed",
        "unlabeled (kept out of training)": stats["unlabeled"],
        "by_source": counts_md({k: stats[k] for k in ("human", "ground_truth", "auto")}),
        "auto_below_threshold (to the human queue)": stats["auto_below_threshold"],
        "per_class": counts_md(stats["per_class"]),
        "auto labels per class (vs hidden truth; trusted on golden)": table_md(_auto_per_class(stats, classes)),
        "skipped_exports": len(stats["skipped_exports"]),
        "skipped_exports (file, task, why)": table_md(stats["skipped_exports"]),
        "uri": dg.MetadataValue.path(st.uri(stats["key"])),
    }


def _box_labels_metadata(stats: dict, st) -> dict:
    """What the UI shows of a batch's box labels (task: detection): sources, boxes per class, the queue."""
    auto = stats.get("auto_vs_truth") or {}
    return {
        "labeled frames": stats["labeled"],
        "boxes": stats["boxes"],
        "unlabeled (kept out of training)": stats["unlabeled"],
        "by_source (frames)": counts_md({k: stats[k] for k in ("human", "ground_truth", "auto")}),
        "boxes per class": counts_md(stats["per_class"]),
        "queued_for_humans": stats["queued"],
        "champion scored on": stats["scored_on"] or "no champion deployed (or the engine is off)",
        "auto labels' mAP@.5 vs the clips' hidden boxes": auto.get("map50"),
        "auto-labeled frames compared": auto.get("frames", 0),
        "not auto-labeled (an unsure detection: to the human queue)": stats["auto_below_threshold"],
        "skipped_exports (file, task, why)": table_md(stats["skipped_exports"]),
        "uri": dg.MetadataValue.path(st.uri(stats["key"])),
    }


def _auto_per_class(stats: dict, classes: list[str]) -> list[dict]:
    """One row per class: its auto labels' accuracy against the clips' hidden truth (simulated fleets), and
    with `engine.auto_min_precision` whether its auto labels were taken, by the champion's golden-set precision."""
    by_index = (stats.get("auto_accuracy") or {}).get("per_class", {})
    trust = (stats.get("auto_trust") or {}).get("per_class", {})
    rows = [{"class": name, "auto labels": by_index.get(k, {}).get("compared", 0),
             "right": by_index.get(k, {}).get("precision"),
             "golden precision when sure": trust.get(name, {}).get("precision"),
             "trusted": trust.get(name, {}).get("trusted", "all (no gate)")} for k, name in enumerate(classes)]  # fmt: skip
    return rows if by_index or trust else []


@dg.asset(partitions_def=fleet_batches, group_name="dataset", deps=[labels], retry_policy=STORE_RETRY,
          kinds={"parquet", "albumentations"})  # fmt: skip
def augmented(context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource) -> dg.MaterializeResult:
    """Labeled rows of a batch with its split, plus augmented copies of rare train groups."""
    s = settings.load()
    out = stages.augment_batch(store.open(), s, context.partition_key)
    if s.task == "detection":
        return dg.MaterializeResult(metadata={
            "originals": out["originals"], "augmented (copies of frames holding rare classes)": out["augmented"],
            "reserved_for_test (clips, frames)": f"{out['reserved_for_test']['clips']}, {out['reserved_for_test']['frames']}",
            "bytes": dg.MetadataValue.int(out["bytes"]),
            "train boxes per class (before, after the copies)": table_md(
                [{"class": c, "before": out["boxes_before"].get(c, 0), "after": n} for c, n in out["boxes_after"].items()]),
        })  # fmt: skip
    balance = out["balance"]
    named = [{**g["group"], "label": s.classes[g["group"]["label"]]} if "label" in g["group"] else g["group"]
             for g in balance["groups"]]  # class names, not indices
    metadata = {
        "originals": out["originals"],
        "augmented": out["augmented"],
        # the engine's synthetic frames of scarce conditions (engine.synthesize_share), counted in `augmented`
        "synthesized (frames per condition)": ", ".join(f"{c} {n}" for c, n in out["synthesized"].items()) or "none",
        "reserved_for_test (clips, frames)": f"{out['reserved_for_test']['clips']}, {out['reserved_for_test']['frames']}",
        "bytes": dg.MetadataValue.int(out["bytes"]),
        "min_group_share_before": balance["min_share_before"],
        "min_group_share_after": balance["min_share_after"],
        "balance (train rows per label, condition)": table_md(
            [{**group, **{k: g[k] for k in ("before", "after", "share_before", "share_after")}}
             for group, g in zip(named, balance["groups"], strict=True)]
        ),
    }
    if out["grid_png"]:
        metadata["samples"] = png_md(out["grid_png"], "augmented samples")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(group_name="dataset", deps=[augmented], retry_policy=STORE_RETRY, kinds={"parquet"})
def training_dataset(settings: SettingsResource, store: StoreResource) -> dg.MaterializeResult:
    """The versioned, sharded training dataset: version N+1 = version N's shards + shards of new batches."""
    st, s = store.open(), settings.load()
    manifest, created = stages.build_dataset_version(st, s)
    return dg.MaterializeResult(metadata=_version_metadata(st, s, manifest, created),
                                data_version=dg.DataVersion(str(manifest["version"])))  # fmt: skip


def _version_metadata(st, s, manifest: dict, created: bool) -> dict:
    """What the UI shows of a dataset version: what it adds to its parent, its shards and counts."""
    counts, changes = manifest.get("counts", {}), {}
    if manifest.get("parent"):  # what this version adds to its parent
        d = diff_versions(st, s.dataset.name, manifest["parent"], manifest["version"])
        changes = {"vs_parent": dg.MetadataValue.md(diff_markdown(d)), "labels_changed": d["labels_changed"],
                   "clips_added": d["clips_added"], "added (rows per class and condition)": png_md(plots.diff_png(d), "added rows")}  # fmt: skip
    return {
        **changes,
        "version": manifest["version"],
        "new_version": created,
        "parent": str(manifest.get("parent")),
        "batches": len(manifest["batches"]),
        "shards": len(manifest["shards"]),
        "rows": sum(sh["rows"] for sh in manifest["shards"]),
        "per_split": counts_md(counts.get("split", {})),
        "per_class": counts_md(counts.get("class", {})),
        "per_condition": counts_md(counts.get("condition", {})),
    }
