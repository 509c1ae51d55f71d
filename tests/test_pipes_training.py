"""The `challenger` asset trains through Dagster Pipes: torchrun in a subprocess, rank 0 reporting
epoch lines and its result. Materialized for real: 2 gloo ranks reach the quality of 1, a rank that
fails fails the step with its own error, and the step's retry resumes from the last checkpoint."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from flywheel.config import load_settings
from flywheel.data.reader import load_arrays
from flywheel.definitions import build_definitions
from flywheel.model import load_weights
from flywheel.predict import predict
from flywheel.store import open_store
from flywheel.tracking import tracker_for
from flywheel.training import distributed
from tests.synthetic import separable_dataset

FAULTS = Path(__file__).parent / "pipes_fault"  # its sitecustomize crashes a chosen rank once
SMALL = {
    # 3 epochs: the light regularization of earlier defaults, so both arms are well past chance this early
    "train.dropout": 0.3, "train.weight_decay": 5e-4,
    "image_size": 32, "train.epochs": 3, "train.lr": 1e-2, "train.width": 8, "train.depth": 1,
    "train.batch_size": 32, "train.device": "cpu", "tune.baseline_epochs": 0,
}  # fmt: skip


@pytest.fixture
def separable(flywheel_home):
    settings = load_settings(**SMALL)
    store = open_store(settings.store_root)
    manifest = separable_dataset(store, settings, per_split={"train": 384, "val": 64, "test": 128})
    return settings, store, manifest


def _train(instance, **overrides) -> dg.ExecuteInProcessResult:
    merged = {**SMALL, **overrides}
    defs = build_definitions(load_settings(**merged), overrides=merged)
    return defs.resolve_job_def("train_and_deploy").execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("challenger")], raise_on_error=False
    )


def _metadata(result) -> dict:
    [m] = result.asset_materializations_for_node("challenger")
    return {k: v.value for k, v in m.metadata.items()}


def _test_accuracy(store, settings, manifest, version: str) -> float:
    images, labels, _ = load_arrays(store, manifest, split="test", image_size=settings.image_size)
    model, _ = load_weights(tracker_for(settings).weights(version))
    return float((predict(model, images).probs.argmax(1) == labels).mean())


@pytest.mark.slow
def test_two_gloo_ranks_reach_the_quality_of_one_through_pipes(separable):
    settings, store, manifest = separable
    with dg.instance_for_test() as instance:
        one = _train(instance)
        # the same global batch of 32: 16 per rank
        two = _train(instance, **{"compute.nproc_per_node": 2, "train.batch_size": 16})
        assert one.success and two.success
        m1, m2 = _metadata(one), _metadata(two)
        assert (m1["ranks (torchrun)"], m2["ranks (torchrun)"]) == (1, 2)
        assert (m1["mlflow_version"], m2["mlflow_version"]) == ("1", "2")
        # rank 0's epoch lines reached the run log through Pipes
        lines = [e.message for e in instance.all_logs(two.run_id) if e.message]
        assert any("epoch 3/3: train_loss" in line for line in lines), lines[-20:]
    acc1, acc2 = (_test_accuracy(store, settings, manifest, v) for v in ("1", "2"))
    _, labels, _ = load_arrays(store, manifest, split="test", image_size=settings.image_size)
    majority = np.bincount(labels).max() / len(labels)
    print(f"test accuracy: 1 rank {acc1:.3f}, 2 ranks {acc2:.3f}, majority class {majority:.3f}")
    assert acc1 > 0.6 and acc2 > 0.6 and majority < 0.3  # both learned: chance is 1/6
    assert abs(acc2 - acc1) <= 0.1


@pytest.mark.slow
def test_a_failing_rank_fails_the_step_with_its_error_and_the_retry_resumes(separable, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{FAULTS}:{Path(__file__).parents[1]}")
    monkeypatch.setenv("FLYWHEEL_TEST_CRASH", f"1:2:{tmp_path / 'crashed'}")  # rank 1, third epoch, once
    with dg.instance_for_test() as instance:
        result = _train(instance, **{"compute.nproc_per_node": 2, "train.batch_size": 16})
        [retried] = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # the first attempt
        why = retried.event_specific_data.error.to_string()
        assert "training rank 1 of 2 failed: RuntimeError: injected failure on rank 1 at epoch 2" in why, why
        assert result.success  # the retry
        assert _metadata(result)["resumed_from_epoch"] == "2"  # two epochs done before the crash were kept
    assert (tmp_path / "crashed").exists()


def test_the_kubernetes_pod_runs_torchrun_with_the_configured_resources():
    from dagster_k8s.pipes import build_pod_body

    s = load_settings(**{"compute.launcher": "k8s", "compute.k8s_image": "registry.example/flywheel:1",
                         "compute.nproc_per_node": 8, "compute.k8s_resources": {"nvidia.com/gpu": "8", "memory": "64Gi"},
                         "compute.k8s_service_account": "trainer"})  # fmt: skip
    command = distributed.torchrun_command(nproc=8, settings=s, device="cuda", python="python", standalone=True)
    pod = build_pod_body(pod_name="challenger-1", image=s.compute.k8s_image, command=command,
                         env_vars={"DAGSTER_PIPES_CONTEXT": "x"}, base_pod_meta=None,
                         base_pod_spec=distributed.k8s_pod_spec(s.compute))  # fmt: skip
    [container] = pod.spec.containers
    assert container.image == "registry.example/flywheel:1"
    assert container.command[:5] == ["python", "-m", "torch.distributed.run", "--nproc_per_node=8", "--standalone"]
    assert container.command[container.command.index("--device") + 1] == "cuda"
    sent = load_settings().model_validate_json(container.command[container.command.index("--settings-json") + 1])
    assert sent == s  # every rank trains with exactly the settings the step loaded
    assert container.resources.limits == {"nvidia.com/gpu": "8", "memory": "64Gi"}
    assert container.volume_mounts[0].mount_path == "/dev/shm"
    assert pod.spec.restart_policy == "Never" and pod.spec.service_account_name == "trainer"
    with pytest.raises(ValueError, match="k8s_image"):
        load_settings(**{"compute.launcher": "k8s"})
