import ast
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from flywheel import ingest, layout
from flywheel.definitions import build_definitions
from flywheel.store import open_store
from tests.conftest import jpeg, make_clip

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"definitions.py"}  # and the command line, flywheel/cli/ (it drives Dagster)


def test_domain_library_never_imports_dagster():
    offenders = []
    for path in (ROOT / "flywheel").rglob("*.py"):
        if path.name in ENTRY_POINTS or path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("dagster", "assets", "jobs", "resources", "sensors")]
    assert offenders == []


def test_dagster_definitions_validate(flywheel_home):
    env = {**os.environ, "DAGSTER_HOME": str(flywheel_home)}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "flywheel.definitions"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # runs the UI or a sensor launches fork each step from a server that imported the code location once
    assert {build_definitions().resolve_job_def(j).executor_def.name for j in ("ingest_batch", "train_and_deploy")} \
        == {"multiprocess_forkserver"}


def test_the_code_location_loads_without_torch_or_mlflow():
    """Every run, step, sensor tick and command imports the code location: torch, MLflow, optuna and
    albumentations (seconds each) are imported by the steps that use them, not by the code location."""
    heavy = ["torch", "mlflow", "optuna", "albumentations", "matplotlib", "onnxruntime"]
    probe = f"import sys, flywheel.definitions as d; d.defs.resolve_all_job_defs(); print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_materialize_ingest_assets_for_a_partition(flywheel_home):
    store = open_store(str(flywheel_home))
    for i in range(4):
        store.write_bytes(f"landing/v/2026-11-01/c{i}.mcap", make_clip(f"c{i}", n=2, image=jpeg(i)))
    store.write_bytes("landing/v/2026-11-01/bad.mcap", b"not an mcap file")
    plan = ingest.plan_batch(store, min_clips=1, max_clips=100)
    ingest.commit_batch(store, plan)
    defs = build_definitions()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("fleet_batches", [plan.batch_id])
        result = defs.resolve_job_def("ingest_batch").execute_in_process(
            instance=instance, partition_key=plan.batch_id
        )
        assert result.success
        mats = {
            m.asset_key.to_user_string(): m.metadata
            for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
        }
        assert mats["raw_clips"]["accepted"].value == 4
        assert mats["raw_clips"]["quarantined"].value == 1
        assert "not_mcap" in mats["raw_clips"]["quarantine_reasons"].value
        assert mats["frames"]["frames"].value == 8
        recorded = instance.get_latest_materialization_event(dg.AssetKey("frames"))
        assert recorded.dagster_event.partition == plan.batch_id
    assert store.exists(layout.frames_key(plan.batch_id))
