"""Model assets: train the challenger, evaluate it against the champion (gate), deploy the winner."""

import dagster as dg

from assets.dataset import training_dataset
from assets.ui import png_md, table_md
from flywheel import loop, plots
from flywheel.evaluate import compare, compare_markdown
from resources import ComputeResource, MlflowResource, SettingsResource, StoreResource

GATE = dg.AssetCheckSpec("gate", asset="evaluation", blocking=True,
                         description="Challenger beats the champion by the margin and regresses no slice")  # fmt: skip


@dg.asset(group_name="model", deps=[training_dataset], kinds={"pytorch", "mlflow"},
          op_tags={"flywheel/kind": "training"})  # fmt: skip
def challenger(
    settings: SettingsResource, store: StoreResource, mlflow: MlflowResource, compute: ComputeResource
) -> dg.MaterializeResult:
    """The newest model, trained on the latest dataset version; MLflow alias `challenger`."""
    out = loop.train_challenger(store.open(), settings.load(), mlflow.tracker(), device=compute.device)
    last = out["history"][-1]
    return dg.MaterializeResult(
        metadata={
            "mlflow_version": out["version"],
            "mlflow_run_id": out["run_id"],
            "dataset_version": out["dataset_version"],
            "device": out["device"],
            "train_rows": out["train_rows"],
            "warm_started": out["warm_started"],
            "resumed_from_epoch": str(out["resumed_from_epoch"]),
            "final_epoch": table_md([{k: v for k, v in last.items()}]),
            "learning_curves": png_md(plots.learning_curves_png(out["history"]), "learning curves"),
        },
        data_version=dg.DataVersion(out["version"]),
    )


@dg.asset(group_name="model", deps=[challenger], check_specs=[GATE], kinds={"mlflow"})
def evaluation(settings: SettingsResource, store: StoreResource, mlflow: MlflowResource, compute: ComputeResource):
    """Challenger and champion scored on the same frames (test split + golden set), and the gate."""
    s = settings.load()
    out = loop.evaluate_challenger(store.open(), s, mlflow.tracker(), device=compute.device)
    ch, gate = out["challenger"], out["gate"]
    slices = [{"slice": k, **{m: v.get(m) for m in ("n", "accuracy", "macro_f1")}} for k, v in ch["per_slice"].items()]
    yield dg.MaterializeResult(
        metadata={
            "challenger_version": out["challenger_version"],
            "champion_version": str(out["champion_version"]),
            "frames": out["frames"],
            "golden_frames": out["golden_frames"],
            s.gate.metric: ch[s.gate.metric],
            "challenger_vs_champion": dg.MetadataValue.md(compare_markdown(compare(ch, out["champion"]))),
            "per_slice": table_md(slices),
            "robustness": table_md([{"corruption": k, **v} for k, v in ch.get("robustness", {}).items()]),
            "confusion": png_md(out["plots"]["confusion"], "confusion"),
            "reliability": png_md(out["plots"]["reliability"], "reliability (calibration)"),
        }
    )
    yield dg.AssetCheckResult(
        check_name="gate",
        passed=bool(gate["passed"]),
        severity=dg.AssetCheckSeverity.ERROR,
        description=gate["reason"],
        metadata={
            "forced": bool(gate.get("forced")),
            "slices (challenger - champion, paired interval)": table_md(
                gate.get("slices", []), ["slice", "n", "challenger", "champion", "delta", "low", "high", "gated", "regressed"]
            ),
        },
    )


@dg.asset(group_name="model", deps=[evaluation], kinds={"onnx"})
def deployed(settings: SettingsResource, store: StoreResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """The champion as ONNX in deploy/<model>/<version>/ with its manifest; MLflow alias `champion`."""
    st = store.open()
    out = loop.deploy_challenger(st, settings.load(), mlflow.tracker())
    return dg.MaterializeResult(
        metadata={
            "version": out["version"],
            "previous": str(out.get("previous_version")),
            "onnx_sha256": out["onnx"]["sha256"],
            "onnx_bytes": dg.MetadataValue.int(out["onnx_bytes"]),
            "onnx_max_abs_diff": out["onnx_max_abs_diff"],
            "forced": bool(out.get("forced_by")),
        }
    )
