"""Model assets: tune the trainer's recipe, train the challenger, evaluate it against the champion
(gate), deploy the winner."""

import dagster as dg

from assets.dataset import training_dataset
from assets.training import train_through_pipes
from assets.ui import png_md, say, table_md
from flywheel import lazy
from resources import ComputeResource, MlflowResource, SettingsResource, StoreResource
from resources.partitions import mining_campaigns

# torch, MLflow, optuna and matplotlib, when a step uses them
plots, stages, campaigns = (lazy.module(f"flywheel.{m}") for m in ("plots", "stages", "engine.campaigns"))
approvals, evaluate = lazy.module("flywheel.evaluation.approvals"), lazy.module("flywheel.evaluation.evaluate")
tracking, tune = lazy.module("flywheel.tracking"), lazy.module("flywheel.training.tune")

# Not blocking: a challenger that does not beat the champion is an outcome, not a crash. The run succeeds,
# `deployed` reads the decision and is not materialized, and the run is tagged flywheel/gate=kept.
GATE = dg.AssetCheckSpec("gate", asset="evaluation",
                         description="Challenger shows a gain beyond the margin and every gated slice non-inferior")  # fmt: skip
GATE_TAG = "flywheel/gate"  # promoted | kept | forced, on the run that judged the challenger


class TuneConfig(dg.Config):
    """A tune run's budget; unset: `tune.trials` and `tune.minutes` of flywheel.yaml."""

    trials: int | None = None
    minutes: float | None = None


@dg.asset(group_name="model", deps=[training_dataset], kinds={"optuna", "mlflow"},
          op_tags={"flywheel/kind": "training"})  # fmt: skip
def trainer_config(
    context: dg.AssetExecutionContext, config: TuneConfig, settings: SettingsResource, store: StoreResource,
    mlflow: MlflowResource, compute: ComputeResource,
) -> dg.MaterializeResult:  # fmt: skip
    """The trainer recipe an Optuna search found best on the latest dataset version; the challenger
    trains with it where flywheel.yaml sets no value."""
    out = tune.tune(store.open(), settings.load(), mlflow.tracker(context), trials=config.trials,
                    minutes=config.minutes, device=compute.device)  # fmt: skip
    return dg.MaterializeResult(
        metadata={
            f"best_{out['metric']}": out["best_value"],
            "best_params": table_md([{"param": k, "value": v} for k, v in out["params"].items()]),
            "trials_run": out["trials"]["run"],
            "trials_pruned": out["trials"]["pruned"],
            "trials_in_study": out["trials"]["in_study"],
            "study": out["study"],
            "storage": out["storage"],
            "dataset_version": out["dataset"]["version"],
            "mlflow_run_id": out["mlflow_run_id"],
            "optimization_history": png_md(out["history_png"], "optimization history"),
        }
    )


@dg.asset(group_name="model", deps=[training_dataset, trainer_config], kinds={"pytorch", "mlflow"},
          op_tags={"flywheel/kind": "training"},
          retry_policy=dg.RetryPolicy(max_retries=1, delay=5))  # a retry resumes from the last epoch's checkpoint  # fmt: skip
def challenger(
    context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource, mlflow: MlflowResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:  # fmt: skip
    """The newest model, trained on the latest dataset version by torchrun (`compute.nproc_per_node`
    ranks) launched through Dagster Pipes; MLflow alias `challenger`. With nothing new to learn from,
    the challenger is kept without launching anything."""
    tracker, s = mlflow.tracker(context), settings.load()
    out = stages.kept_challenger(store.open(), s, tracker, device=compute.device, world_size=s.compute.nproc_per_node)
    if out is None:
        out = train_through_pipes(context, s, device=compute.device)
    else:
        out["ranks"] = "none (kept)"
        say(context, f"challenger v{out['version']} already trained on dataset v{out['dataset_version']} "
                     "with this recipe: kept, no training launched")  # fmt: skip
    metadata = _detector_metadata(out, tracker) if s.task == "detection" else _challenger_metadata(out, tracker)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(out["version"]))


def _links(out: dict, tracker) -> dict:
    links = tracking.ui_urls(tracker.tracking_uri, experiment_id=tracker.experiment_id, run_id=out["run_id"],
                    model_name=tracker.model_name, version=out["version"])  # fmt: skip
    return {k: dg.MetadataValue.url(v) for k, v in links.items()}  # with a tracking server


def _detector_metadata(out: dict, tracker) -> dict:
    """What the UI shows of a detector challenger (task: detection): its run, data, val mAP, loss curve."""
    val = out.get("val") or {}
    return {
        "mlflow_version": out["version"],
        "up_to_date (no new data: kept, not retrained)": out["up_to_date"],
        "mlflow_run_id": out["run_id"],
        "dataset_version": out["dataset_version"],
        "train_rows": out["train_rows"],
        "ranks (torchrun)": out.get("ranks", 1),
        "val mAP@.5": val.get("map50"),
        "val mAP@[.5:.95]": val.get("map"),
        "training_seconds": out.get("training_seconds"),
        "vs_yardstick_detector (val mAP@.5)": table_md([out["yardstick"] or {"check": "not checked (no val boxes, or "
                                                                                  "detection.yardstick_steps is 0)"}]),
        **({"learning_curves": png_md(plots.learning_curves_png(out["history"]), "loss per step")} if out["history"] else {}),
        **_links(out, tracker),
    }


def _challenger_metadata(out: dict, tracker) -> dict:
    """What the UI shows of a challenger: its run, data, ranks, last epoch, the yardstick check, curves."""
    return {
        "mlflow_version": out["version"],
        "up_to_date (no new data: kept, not retrained)": out["up_to_date"],
        "mlflow_run_id": out["run_id"],
        "dataset_version": out["dataset_version"],
        "device": out["device"],
        "ranks (torchrun)": out["ranks"],
        "train_rows": out["train_rows"],
        "warm_started": out["warm_started"],
        "resumed_from_epoch": str(out["resumed_from_epoch"]),
        "final_epoch": table_md([dict(out["history"][-1])]),
        "weights": (f"refit on train + val ({out['refit_rows']} rows), its last epoch" if out.get("refit_history")
                    else "the select run's: train only, " + (f"its best val epoch ({out['best_epoch'] + 1} of {len(out['history'])})"
                                                              if out.get("best_epoch") is not None else "its last epoch")),
        "refit_final_epoch": table_md([dict(out["refit_history"][-1])] if out.get("refit_history") else []),
        "vs_yardstick_cnn (val)": table_md([_vs_baseline(out["baseline_check"])]),
        "learning_curves": png_md(plots.learning_curves_png(out["history"]), "learning curves"),
        **_links(out, tracker),
    }


def _vs_baseline(check: dict | None) -> dict:
    """One row: the challenger and the yardstick CNN on val, and what follows from it."""
    if check is None:
        return {"check": "not checked (no val rows, or tune.baseline_epochs is 0)"}
    verdict = {"short": "short: the retune sensor asks for a tune run", "ok": "at or above the yardstick",
               "broken": f"broken: the yardstick did not learn (val accuracy {check['baseline_val_accuracy']} "
                         f"against a majority share of {check['majority_share']}), so nothing is shown"}  # fmt: skip
    return {"metric": check["metric"], "challenger": check["challenger"], "yardstick": check["baseline"],
            "verdict": verdict[check["verdict"]], "yardstick_seconds": check["baseline_seconds"],
            "share_of_training_time": check.get("share_of_training")}  # fmt: skip


def _on_both_sets(out: dict, fixed: dict, metric: str) -> list[dict]:
    """Challenger and champion on the growing evaluation set (it gets harder as rare slices join it) and
    on the fixed held-out set (the same frames every turn), or why there is no fixed set yet."""
    unscored = "not scored (no champion, or another class list)"
    rows = [{"set": f"growing evaluation set (v{out['dataset_version']} test + golden)", "frames": out["frames"],
             "challenger": out["challenger"][metric], "champion": (out["champion"] or {}).get(metric, unscored)}]  # fmt: skip
    if fixed["frames"] is None:
        return rows + [{"set": "fixed held-out set", "frames": fixed["note"]}]
    return rows + [{"set": f"fixed held-out set (frozen from v{fixed['dataset_version']})", "frames": fixed["frames"],
                    "challenger": fixed["challenger"][metric], "champion": (fixed["champion"] or {}).get(metric, unscored)}]  # fmt: skip


@dg.asset(group_name="model", deps=[challenger], check_specs=[GATE], kinds={"mlflow"})
def evaluation(context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource,
               mlflow: MlflowResource, compute: ComputeResource):  # fmt: skip
    """Challenger and champion scored on the same frames (test split + golden set), and the gate."""
    s = settings.load()
    out = stages.evaluate_challenger(store.open(), s, mlflow.tracker(context), device=compute.device)
    gate = out["gate"]
    outcome = "promoted" if gate["passed"] else "kept"
    context.instance.add_run_tags(context.run_id, {GATE_TAG: outcome})
    say(context, f"gate: challenger v{out['challenger_version']} "
                     f"{'is promoted' if gate['passed'] else 'is not promoted, the champion is kept'}: {gate['reason']}")  # fmt: skip
    metadata = _box_evaluation_metadata(out, outcome) if s.task == "detection" else _evaluation_metadata(out, s, store.open(), outcome)
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(check_name="gate", passed=bool(gate["passed"]),
                              severity=dg.AssetCheckSeverity.WARN,  # the champion is kept: nothing is broken
                              description=gate["reason"], metadata=_gate_metadata(gate))  # fmt: skip


def _evaluation_metadata(out: dict, s, st, outcome: str) -> dict:
    """What the UI shows of an evaluation: the decision, both sets, per slice, robustness, campaigns, plots."""
    ch, gate, metric = out["challenger"], out["gate"], s.gate.metric
    slices = [{"slice": k, **{m: v.get(m) for m in ("n", "accuracy", "macro_f1")}} for k, v in ch["per_slice"].items()]
    fixed = out.get("fixed_set") or {"frames": None, "note": "not scored: evaluated before fixed sets existed"}
    return {
        "gate": f"{outcome}: {gate['reason']}",  # the decision, on the asset as well as on its check
        "challenger_version": out["challenger_version"],
        "champion_version": str(out["champion_version"]),
        "champion_repair": table_md([out["champion_repair"]] if out["champion_repair"] else []),
        "frames": out["frames"],
        "golden_frames": out["golden_frames"],
        metric: ch[metric],
        f"fixed held-out set {metric}": fixed["challenger"][metric] if fixed["frames"] else None,
        "growing evaluation set vs fixed held-out set": table_md(_on_both_sets(out, fixed, metric)),
        "challenger_vs_champion": dg.MetadataValue.md(evaluate.compare_markdown(evaluate.compare(ch, out["champion"]))),
        "per_slice": table_md(slices),
        "robustness": table_md([{"corruption": k, **v} for k, v in ch.get("robustness", {}).items()]),
        "mining campaigns (clips brought, slice score before and after)": table_md(
            campaigns.effects(st, s),
            ["name", "slice", "active", "clips", "metric", "before", "before_model", "after", "after_model", "delta"],
        ),
        "up_to_date (the challenger is the served model: kept)": bool(out.get("up_to_date")),
        **{plot: png_md(png, plot) for plot, png in out["plots"].items()},  # confusion, reliability, saliency
    }


def _box_evaluation_metadata(out: dict, outcome: str) -> dict:
    """What the UI shows of a detector's evaluation: the decision, mAP overall, per class and slice, boxes drawn."""
    ch, cp, gate = out["challenger"], out["champion"] or {}, out["gate"]
    fixed = out.get("fixed_set") or {"frames": None}
    per_class = [{"class": c, "challenger AP@.5": v["map50"], "champion AP@.5": (cp.get("per_class") or {}).get(c, {}).get("map50"),
                  "challenger AP@[.5:.95]": v["map"]} for c, v in ch["per_class"].items()]  # fmt: skip
    slices = [{"slice": k, "frames": v["n"], "challenger mAP@.5": v["map50"],
               "champion mAP@.5": (cp.get("per_slice") or {}).get(k, {}).get("map50")} for k, v in ch["per_slice"].items()]  # fmt: skip
    return {
        "gate": f"{outcome}: {gate['reason']}",
        "challenger_version": out["challenger_version"],
        "champion_version": str(out["champion_version"]),
        "frames": out["frames"],
        "golden_frames": out["golden_frames"],
        "map50": ch["map50"],
        "map (.5:.95)": ch["map"],
        "champion map50": cp.get("map50"),
        "fixed held-out set map50": (fixed.get("challenger") or {}).get("map50") if fixed["frames"] else fixed.get("note"),
        "per_class": table_md(per_class),
        "per_slice": table_md(slices),
        "up_to_date (the challenger is the served model: kept)": bool(out.get("up_to_date")),
        **{plot: png_md(png, plot) for plot, png in out["plots"].items()},  # per-class mAP, predicted boxes
    }


def _gate_metadata(gate: dict) -> dict:
    """The gate check's metadata: the rule, the overall interval, each slice's interval and status."""
    return {
        "rule that promoted (superior, no worse on newer data, floor)": str(gate.get("rule")),
        "overall gain (paired interval)": f"[{_num(gate['primary'].get('low'))}, {_num(gate['primary'].get('high'))}]",
        "slices (challenger - champion, paired interval; inconclusive: too few frames)": table_md(
            gate.get("slices", []),
            ["slice", "n", "challenger", "champion", "delta", "low", "high", "critical", "status", "blocks"],
        ),
    }


class ApprovalConfig(dg.Config):
    """Launched from the UI with these set: approve the challenger (gate.require_approval), then deploy it."""

    approve_version: str | None = None  # the challenger's version, e.g. "7"
    approved_by: str | None = None  # default: the account the step runs as (recorded beside it in any case)
    reason: str | None = None


@dg.asset(group_name="model", deps=[evaluation], kinds={"onnx"}, output_required=False)
def deployed(context: dg.AssetExecutionContext, config: ApprovalConfig, settings: SettingsResource,
             store: StoreResource, mlflow: MlflowResource):  # fmt: skip
    """The champion as ONNX under deploy/ (one folder per model and version) with its manifest; MLflow alias `champion`.
    Not materialized when the gate kept the champion (unless `flywheel force` forced that version), or while
    a required approval is missing."""
    st, s, tracker = store.open(), settings.load(), mlflow.tracker()
    if config.approve_version:
        record = approvals.approve(st, s, tracker, config.approve_version, by=config.approved_by,
                              reason=config.reason or "", via=f"dagster run {context.run_id}")  # fmt: skip
        say(context, f"approved by {record['by']} (account {record['account']}@{record['host']}) "
                     f"at {record['at']}: {record['reason']}")  # fmt: skip
    held = approvals.held_back(st, s, tracker)
    if held is not None:
        outcome, why = held
        if outcome == "awaiting-approval":  # the evaluation step tagged the gate's own outcome
            context.instance.add_run_tags(context.run_id, {GATE_TAG: outcome})
        say(context, f"not deployed: {why}")
        return
    out = stages.deploy_challenger(st, s, tracker)
    # the new champion embeds the queries: mining for scarce conditions starts (or renews) now; the model is
    # deployed whatever happens here, so a mining error is reported, not raised
    try:
        mined = campaigns.mine_scarce(st, s)
    except ValueError as e:
        say(context, f"scarce-slice mining failed: {e}")
        mined = {"started": [], "stopped": [], "active": [], "shares": {}, "error": str(e)}
    # every running one a partition, also one a killed run had started before it could add it
    missing = [n for n in mined.get("active", []) if not context.instance.has_dynamic_partition(mining_campaigns.name, n)]
    if missing:
        context.instance.add_dynamic_partitions(mining_campaigns.name, missing)
    if mined["started"] or mined["stopped"]:
        say(context, f"scarce-slice campaigns started: {mined['started'] or 'none'}; stopped: {mined['stopped'] or 'none'}")
    yield dg.MaterializeResult(metadata={**_deployed_metadata(out), **_scarce_metadata(s, mined)})


def _scarce_metadata(s, mined: dict) -> dict:
    """What the UI shows of scarce-slice mining (`engine.scarce_share`): each condition's share, and the campaigns."""
    if s.engine.scarce_share is None:
        return {"scarce-slice mining": "off (engine.scarce_share unset)"}
    return {
        "scarce-slice mining": mined.get("error") or f"the rarest condition, while below {s.engine.scarce_share:.0%} of the labeled frames",
        "condition shares (labeled originals)": table_md([{"condition": c, "share": v} for c, v in mined["shares"].items()]),
        "scarce-slice campaigns started": ", ".join(mined["started"]) or "none",
        "scarce-slice campaigns stopped": ", ".join(mined["stopped"]) or "none",
    }


def _deployed_metadata(out: dict) -> dict:
    """What the UI shows of a deploy: the graph, its parity, who forced or approved it, int8, latency."""
    return {
        "version": out["version"],
        "previous": str(out.get("previous_version")),
        "onnx_sha256": out["onnx"]["sha256"],
        "onnx_bytes": dg.MetadataValue.int(out["onnx"]["bytes"]),
        "onnx_max_abs_diff": out.get("onnx_max_abs_diff"),  # None: already deployed, nothing exported
        "already_deployed": bool(out.get("already_deployed")),
        "forced (flywheel force: who, why)": (f"{out['forced_by']['who']}: {out['forced_by']['why']}"
                                              if out.get("forced_by") else "no"),  # fmt: skip
        "approved_by": (out.get("approval") or {}).get("by", "-"),
        "serve (the graph the fleet runs)": out.get("serve", "fp32"),
        "int8_check": out["int8"]["check"]["reason"] if out.get("int8")
        else "no int8 graph (deploy.int8: false, or no frames to calibrate on)",
        "latency_ms (onnxruntime, CPU, 1 thread)": table_md(
            [{"graph": g, **ms} for g, ms in (out.get("latency_ms") or {}).items()]
        ),
    }


def _num(x) -> str:
    return "-" if x is None else f"{x:+.4f}"
