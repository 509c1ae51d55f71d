import hashlib

import numpy as np
import onnx
import pytest
import torch

from flywheel.deployment import deploy as dp
from flywheel.model import ModelConfig, build_model
from flywheel.store import LocalStore

CLASSES = ["a", "b", "c"]
SIZE = 16
DATASET = {"name": "perception", "version": "v3", "manifest_sha256": "ab" * 32}


def tiny_model(seed: int):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(num_classes=3, image_size=SIZE, width=4, depth=1))
    # Non-trivial BatchNorm statistics, so eval mode matters for parity.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported():
    model = tiny_model(0)
    return model, dp.export_onnx(model, image_size=SIZE)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 3, SIZE, SIZE), dtype=np.uint8)


def do_deploy(store, version, onnx_bytes, **kw):
    args = dict(model_name="perception", version=version, onnx_bytes=onnx_bytes, classes=CLASSES,
                image_size=SIZE, metrics={"macro_f1": 0.8}, dataset=DATASET, mlflow_version=version,
                gate={"passed": True, "reason": "beats"}, forced_by=None)  # fmt: skip
    return dp.deploy(store, **{**args, **kw})


# --- export and parity ----------------------------------------------------------------------


def test_export_has_the_fixed_io_and_a_dynamic_batch(exported):
    _, data = exported
    inp, out = dp.graph_spec(data)
    assert inp == {"name": "image", "dtype": "uint8", "shape": ["batch", 3, SIZE, SIZE]}
    assert out == {"name": "logits", "dtype": "float32", "shape": ["batch", 3]}
    assert onnx.load_from_string(data).opset_import[0].version == 17


def test_parity_holds_for_any_batch_size(exported, images):
    model, data = exported
    assert dp.check_parity(model, data, images) <= 1e-3
    assert dp.check_parity(model, data, images[:1]) <= 1e-3


def test_parity_failure_raises_a_clear_error(exported, images):
    _, data = exported
    other = tiny_model(0)
    with torch.no_grad():
        other.head.bias += 0.5  # the graph no longer matches this model
    with pytest.raises(dp.ParityError, match=r"differ by 0\.5.* > atol"):
        dp.check_parity(other, data, images)


def test_export_keeps_the_training_mode():
    model = tiny_model(1).train()
    dp.export_onnx(model, image_size=SIZE)
    assert model.training


# --- deploy, current, rollback --------------------------------------------------------------


def test_deploy_writes_onnx_manifest_and_current(tmp_path, exported):
    _, data = exported
    store = LocalStore(tmp_path)
    m = do_deploy(store, "1", data)
    assert store.read_bytes("deploy/perception/1/model.onnx") == data
    on_disk = store.read_json("deploy/perception/1/manifest.json")
    assert on_disk == m
    assert m["onnx"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert m["input"]["name"] == "image" and m["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert m["classes"] == CLASSES and m["dataset"] == DATASET and m["mlflow_version"] == "1"
    assert m["previous_version"] is None and m["forced_by"] is None and m["deployed_at"]
    cur = dp.current(store, "perception")
    assert cur["version"] == "1" and cur["history"] == []
    assert cur["manifest"] == "deploy/perception/1/manifest.json"


def test_second_deploy_records_the_previous_champion_and_forced_by(tmp_path, exported):
    _, data = exported
    store = LocalStore(tmp_path)
    do_deploy(store, "1", data)
    m = do_deploy(store, "2", data, forced_by={"who": "alice", "why": "hotfix"})
    assert m["previous_version"] == "1" and m["forced_by"] == {"who": "alice", "why": "hotfix"}
    assert dp.current(store, "perception")["history"] == ["1"]


def test_redeploying_the_same_version_is_idempotent_but_other_bytes_are_refused(tmp_path, exported):
    _, data = exported
    store = LocalStore(tmp_path)
    first = do_deploy(store, "1", data)
    assert do_deploy(store, "1", data) == first
    assert dp.current(store, "perception")["history"] == []
    other = dp.export_onnx(tiny_model(2), image_size=SIZE)
    with pytest.raises(ValueError, match="immutable"):
        do_deploy(store, "1", other)


def test_rollback_walks_back_and_errors_at_the_first_version(tmp_path, exported):
    _, data = exported
    store = LocalStore(tmp_path)
    with pytest.raises(dp.RollbackError, match="nothing is deployed"):
        dp.rollback(store, "perception")
    for v in ("1", "2", "3"):
        do_deploy(store, v, data)
    assert dp.rollback(store, "perception") == ("3", "2")
    cur = dp.current(store, "perception")
    assert cur["version"] == "2" and cur["history"] == ["1"] and cur["rolled_back_from"] == "3"
    assert dp.rollback(store, "perception") == ("2", "1")
    with pytest.raises(dp.RollbackError, match="no previous champion"):
        dp.rollback(store, "perception")
    assert dp.current(store, "perception")["version"] == "1"


def test_load_deployed_serves_the_current_model(tmp_path, exported, images):
    model, data = exported
    store = LocalStore(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing is deployed"):
        dp.load_deployed(store, "perception")
    do_deploy(store, "1", data)
    sess, manifest = dp.load_deployed(store, "perception")
    assert manifest["version"] == "1"
    logits = sess.run(["logits"], {"image": images})[0]
    np.testing.assert_allclose(logits, model(torch.from_numpy(images)).detach().numpy(), atol=1e-4)


def test_sessions_run_on_the_compute_device_where_onnxruntime_can(tmp_path, exported, monkeypatch):
    _, data = exported
    store = LocalStore(tmp_path)
    do_deploy(store, "1", data)
    # this onnxruntime: whatever it offers decides; CPU is always there and always last
    assert dp.providers("cpu") == ["CPUExecutionProvider"]
    assert dp.providers("auto")[-1] == "CPUExecutionProvider"
    sess, _ = dp.load_deployed(store, "perception", "auto")
    assert sess.get_providers()[-1] == "CPUExecutionProvider"
    # with a GPU build of onnxruntime, 'auto' and 'cuda' put CUDA first, 'cpu' stays on the CPU
    monkeypatch.setattr(dp.ort, "get_available_providers", lambda: [dp.CUDA_PROVIDER, "CPUExecutionProvider"])
    assert dp.providers("auto") == dp.providers("cuda") == [dp.CUDA_PROVIDER, "CPUExecutionProvider"]
    assert dp.providers("cpu") == ["CPUExecutionProvider"]
    # without it, a 'cuda' device scores on the CPU instead of failing the batch
    monkeypatch.setattr(dp.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert dp.providers("cuda") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="device must be"):
        dp.providers("tpu")


def test_load_deployed_refuses_a_tampered_onnx(tmp_path, exported):
    _, data = exported
    store = LocalStore(tmp_path)
    do_deploy(store, "1", data)
    store.write_bytes("deploy/perception/1/model.onnx", data + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        dp.load_deployed(store, "perception")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"version": "../x"}, "invalid version"),
        ({"model_name": "a/b"}, "invalid model name"),
        ({"classes": ["a", "b"]}, "2 classes"),
        ({"image_size": 32}, "expected"),
        ({"dataset": {"name": "perception"}}, "dataset is missing"),
        ({"forced_by": {"who": "alice"}}, "forced_by needs"),
    ],
)
def test_deploy_rejects_bad_input_and_writes_nothing(tmp_path, exported, kw, match):
    _, data = exported
    store = LocalStore(tmp_path)
    with pytest.raises(ValueError, match=match):
        version = kw.get("version", "1")
        do_deploy(store, version, data, **{k: v for k, v in kw.items() if k != "version"})
    assert store.list("deploy/") == []
