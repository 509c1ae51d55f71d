"""scripts/gpu_check.py's flywheel part, on this machine's device: what a GPU session would run first."""

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_check_iterate_runs_the_flywheel_and_reads_back_where_each_part_ran():
    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = gpu_check.check_iterate(quick=True)
    assert out["status"] == "ok", out
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ran_on = out["ran_on"]
    assert ran_on["ranks"] == 1 and str(ran_on["training"]).startswith(device) and ran_on["evaluation"].startswith(device)
    # the second iteration's labels were scored by the first champion, on the provider onnxruntime had
    assert ran_on["labels_scored_on"] == ran_on["auto_labels_and_shadow"]
    assert ran_on["labels_scored_on"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert out["demo_wall_s"] > 0
