"""What a person asks of the flywheel: where things stand (`flywheel status`) and what one turn did."""

from __future__ import annotations

from flywheel import layout, recovery
from flywheel.config import Settings
from flywheel.data import dataset
from flywheel.deployment import deploy
from flywheel.ingest import list_batches, pending_clips
from flywheel.labeling.queue import human_labels_spent
from flywheel.store import Store
from flywheel.tracking import CHALLENGER, Tracker


def status(store: Store, settings: Settings) -> dict:
    """Champion, dataset version, batches and their frames, parked batches with their last error,
    pending and quarantined clips."""
    batches = []
    manifests = list_batches(store)
    for m in manifests:
        row = {"batch_id": m["batch_id"], "clips": len(m["clips"]), "created_at": m["created_at"]}
        if store.exists(layout.frames_key(m["batch_id"])):
            row["frames"] = store.parquet_file(layout.frames_key(m["batch_id"])).metadata.num_rows
        batches.append(row)
    q = quarantined(store)
    return {
        "store": settings.store_root,
        "champion": champion_status(store, settings),
        "dataset_version": dataset.latest_version(store, settings.dataset.name),
        "batches": batches,
        "frames": sum(b.get("frames", 0) for b in batches),
        "parked": list(recovery.parked_batches(store, [m["batch_id"] for m in manifests]).values()),
        "pending_clips": len(pending_clips(store)),
        "quarantined": len(q),
        "quarantine": [{k: r.get(k) for k in ("key", "reason", "detail", "batch_id")} for r in q],
    }


def quarantined(store: Store) -> list[dict]:
    """Every quarantined clip's reason record."""
    return [store.read_json(o.key) for o in store.list(layout.QUARANTINE) if o.key.endswith(layout.REASON_SUFFIX)]


def champion_status(store: Store, settings: Settings) -> dict | None:
    """The deployed version, its dataset, when, its headline metrics and the champions before it."""
    cur = deploy.current(store, settings.mlflow.model_name)
    if cur is None:
        return None
    m = store.read_json(cur["manifest"])
    keys = ("accuracy", "macro_f1", "ece", "map50", "map")
    return {
        "version": cur["version"], "dataset": m.get("dataset"), "deployed_at": m.get("deployed_at"),
        "metrics": {k: m["metrics"][k] for k in keys if k in m.get("metrics", {})},
        "history": cur.get("history", []),
    }  # fmt: skip


def rare_condition(settings: Settings) -> str:
    """The condition the fleet sees least at the start: the slice the demo watches."""
    start = settings.sim.conditions_start
    return min(start, key=start.get)


def iteration_summary(store: Store, settings: Settings, tracker: Tracker) -> dict:
    """What one iteration did: dataset, challenger vs champion (overall and rare slice), gate, deploy, and
    challenger, champion and the deployed model on the fixed held-out set (None: no fixed set yet, or
    that model was not scored on it; `fixed_note` says why there is no set)."""
    version = tracker.alias(CHALLENGER)
    ev = store.read_json(layout.evaluation_key(settings.mlflow.model_name, version))
    metric, rare = settings.metric, f"condition={rare_condition(settings)}"
    manifest = dataset.load_manifest(store, settings.dataset.name, ev["dataset_version"])

    def scores(report: dict | None) -> tuple[float | None, float | None]:
        if not report:
            return None, None
        return report[metric], report["per_slice"].get(rare, {}).get(metric)

    ch, ch_rare = scores(ev["challenger"])
    champ, champ_rare = scores(ev["champion"])
    cur = deploy.current(store, settings.mlflow.model_name)
    deployed = cur["version"] if cur else None
    fixed = ev.get("fixed_set") or {"frames": None, "note": "not scored: evaluated before fixed sets existed"}
    fixed_ch, fixed_champ = ((fixed.get(role) or {}).get(metric) for role in ("challenger", "champion"))
    # the model the fleet runs after this turn: the challenger if it was deployed, else the champion kept
    on_fixed = {f"v{ev['champion_version']}": fixed_champ, f"v{version}": fixed_ch}
    # the rare slice as the gate judged it: its frames, and challenger - champion's paired interval
    judged = next((x for x in ev["gate"].get("slices", []) if x["slice"] == rare), None)
    # the per-turn yardstick check of this challenger (tune.baseline_epochs): its verdict and what it cost
    check_key = layout.baseline_check_key(settings.dataset.name)
    check = store.read_json(check_key) if store.exists(check_key) else None
    check = check if check and check.get("model_version") == version else None
    return {
        "human_labels": human_labels_spent(store),
        "dataset_version": ev["dataset_version"],
        "frames": manifest["counts"]["rows"],
        "eval_frames": ev["frames"],
        "metric": metric,
        "rare_slice": rare,
        "challenger_version": version,
        "challenger": ch,
        "challenger_rare": ch_rare,
        "champion_version": ev["champion_version"],
        "champion": champ,
        "champion_rare": champ_rare,
        "rare_frames": ev["challenger"]["per_slice"].get(rare, {}).get("n", 0),
        "rare_delta": judged and [judged["delta"], judged["low"], judged["high"]],
        "rare_gated": judged["gated"] if judged else None,
        "min_slice_frames": settings.gate.min_slice_frames,
        "slice_tolerance": settings.gate.slice_tolerance,
        "gate_passed": ev["gate"]["passed"],
        "gate_reason": ev["gate"]["reason"],
        "deployed": deployed,
        "fixed_frames": fixed["frames"],
        "fixed_from_version": fixed.get("dataset_version"),
        "fixed_challenger": fixed_ch,
        "fixed_champion": fixed_champ,
        "fixed_deployed": on_fixed.get(deployed),
        "fixed_note": fixed["note"],
        "yardstick": check and {k: check.get(k) for k in ("verdict", "challenger", "baseline", "baseline_seconds",
                                                          "training_seconds", "share_of_training")},
    }
