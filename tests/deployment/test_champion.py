"""One truth for the champion: current.json and MLflow's `champion` alias move together, under one lease."""

import json
import threading
import time

import pytest
import torch

from flywheel import layout
from flywheel.config import load_settings
from flywheel.deployment import champion, deploy
from flywheel.model import ModelConfig, build_model, save_weights
from flywheel.store import open_store
from flywheel.tracking import CHAMPION, tracker_for

CLASSES = ["a", "b", "c"]
SIZE = 16
MODEL = "perception"


class Aliases:
    """The two Tracker verbs champion.py uses, in memory; `delay` widens the gap between current.json and the alias."""

    def __init__(self, delay: float = 0.0):
        self.aliases: dict[str, str] = {}
        self.delay = delay

    def alias(self, name: str) -> str | None:
        return self.aliases.get(name)

    def set_alias(self, name: str, version: str) -> None:
        time.sleep(self.delay)
        self.aliases[name] = str(version)


@pytest.fixture(scope="module")
def onnx_bytes():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, image_size=SIZE, width=4, depth=1))
    return deploy.export_onnx(model, image_size=SIZE)


@pytest.fixture
def settings():
    return load_settings(classes=CLASSES, image_size=SIZE)


def promote(store, settings, tracker, version, onnx_bytes):
    return champion.promote(store, settings, tracker, version=version, onnx_bytes=onnx_bytes, classes=CLASSES,
                            metrics={"macro_f1": 0.8}, gate={"passed": True, "reason": "beats"},
                            dataset={"name": "ds", "version": 1, "manifest_sha256": "0" * 64})  # fmt: skip


def leases(store):
    return [store.read_json(o.key) for o in store.list(layout.lease_prefix(MODEL))]


def test_promote_and_rollback_move_current_and_alias_together(tmp_path, settings, onnx_bytes):
    store, tracker = open_store(str(tmp_path / "s")), Aliases()
    for v in ("1", "2"):
        assert promote(store, settings, tracker, v, onnx_bytes)["mlflow_version"] == v
    assert deploy.current(store, MODEL)["version"] == "v2" and tracker.alias(CHAMPION) == "2"
    assert champion.rollback(store, settings, tracker) == ("v2", "v1")
    assert deploy.current(store, MODEL)["version"] == "v1" and tracker.alias(CHAMPION) == "1"
    assert champion.reconcile(store, settings, tracker) is None  # they agree: nothing to repair, no lease taken
    purposes = [x["purpose"] for x in leases(store)]
    assert purposes == ["promote v1", "promote v2", "rollback"]
    assert all(x["released_at"] for x in leases(store))


def test_reconcile_repairs_the_alias_after_a_kill_between_current_and_alias(tmp_path, settings, onnx_bytes,
                                                                             monkeypatch):  # fmt: skip
    store, tracker = open_store(str(tmp_path / "s")), tracker_for(settings)
    cfg = ModelConfig(num_classes=3, image_size=SIZE, width=4, depth=1)
    weights = save_weights(build_model(cfg), cfg, CLASSES)
    for _ in range(3):
        with tracker.run("train") as run_id:
            tracker.register(run_id, weights)
    promote(store, settings, tracker, "1", onnx_bytes)

    def killed(alias, version):
        raise KeyboardInterrupt("killed after current.json moved, before the alias")

    with monkeypatch.context() as m:
        m.setattr(tracker, "set_alias", killed)
        with pytest.raises(KeyboardInterrupt):
            promote(store, settings, tracker, "2", onnx_bytes)
    # two truths: served v2, alias still 1
    assert deploy.current(store, MODEL)["version"] == "v2" and tracker.alias(CHAMPION) == "1"
    assert all(x["released_at"] for x in leases(store))  # the lease did not outlive its holder

    repair = champion.reconcile(store, settings, tracker)
    assert repair["served"] == "v2" and (repair["alias_was"], repair["alias_now"]) == ("1", "2")
    assert tracker.alias(CHAMPION) == "2" and champion.reconcile(store, settings, tracker) is None

    deploy.deploy(store, model_name=MODEL, version="v3", onnx_bytes=onnx_bytes, classes=CLASSES, image_size=SIZE,
                  metrics={}, dataset={"name": "ds", "version": 1, "manifest_sha256": "0" * 64},
                  mlflow_version="3", gate={"passed": True})  # fmt: skip
    tracker.client.delete_registered_model_alias(MODEL, CHAMPION)  # served v3, no alias at all
    repair = champion.reconcile(store, settings, tracker)
    assert (repair["served"], repair["alias_was"], repair["alias_now"]) == ("v3", None, "3")
    assert tracker.alias(CHAMPION) == "3"


def test_reconcile_leaves_the_alias_alone_when_nothing_is_deployed(tmp_path, settings):
    tracker = Aliases()
    tracker.set_alias(CHAMPION, "4")  # e.g. a warm-start alias set by a benchmark without deploying
    assert champion.reconcile(open_store(str(tmp_path / "s")), settings, tracker) is None
    assert tracker.alias(CHAMPION) == "4"


def test_a_deploy_racing_a_rollback_leaves_one_truth(tmp_path, settings, onnx_bytes, monkeypatch):
    store, tracker = open_store(str(tmp_path / "s")), Aliases(delay=0.05)
    for v in ("1", "2"):
        promote(store, settings, tracker, v, onnx_bytes)
    read_current = deploy.current

    def slow_current(store, model_name):  # both racers read current.json before either writes it
        cur = read_current(store, model_name)
        time.sleep(0.1)
        return cur

    monkeypatch.setattr(deploy, "current", slow_current)
    start, errors = threading.Barrier(2), []

    def race(step):
        start.wait()
        try:
            step()
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=race, args=(lambda: promote(store, settings, tracker, "3", onnx_bytes),)),
               threading.Thread(target=race, args=(lambda: champion.rollback(store, settings, tracker),))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cur = read_current(store, MODEL)
    assert tracker.alias(CHAMPION) == cur["version"].removeprefix("v")
    # one after the other: rollback to v1 then v3 over it, or v3 then rolled back to v2; the rolled-back
    # version never comes back into the history
    assert (cur["version"], cur["history"]) in [("v3", ["v1"]), ("v2", ["v1"])]


def test_a_stale_lease_is_broken(tmp_path, settings, onnx_bytes):
    store, tracker = open_store(str(tmp_path / "s")), Aliases()
    ghost = {"owner": "host-9:4242:7", "purpose": "promote v9", "acquired_at": "2000-01-01T00:00:00+00:00",
             "expires_at": "2000-01-01T00:02:00+00:00"}  # fmt: skip
    assert store.create(layout.lease_key(MODEL, 1), json.dumps(ghost).encode())  # its holder died
    t0 = time.monotonic()
    promote(store, settings, tracker, "1", onnx_bytes)
    assert time.monotonic() - t0 < champion.LEASE_WAIT_S  # did not wait for the dead holder
    assert deploy.current(store, MODEL)["version"] == "v1" and tracker.alias(CHAMPION) == "1"
    mine = store.read_json(layout.lease_key(MODEL, 2))
    assert mine["broke"] == {k: ghost[k] for k in ("owner", "purpose", "expires_at")}
    assert mine["released_at"]


def test_a_lease_whose_holder_was_killed_on_this_host_is_broken_at_once(tmp_path, settings, onnx_bytes):
    import subprocess
    import sys

    from flywheel.recovery import process_tags

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tags = {**process_tags(), "flywheel/pid": str(child.pid)}
    child.kill()
    child.wait()
    store, tracker = open_store(str(tmp_path / "s")), Aliases()
    held = {"owner": f"here:{child.pid}:1", "purpose": "promote v9", "acquired_at": "2999-01-01T00:00:00+00:00",
            "expires_at": "2999-01-01T00:02:00+00:00", "process": tags}  # fmt: skip
    assert store.create(layout.lease_key(MODEL, 1), json.dumps(held).encode())  # live for centuries ...
    t0 = time.monotonic()
    promote(store, settings, tracker, "1", onnx_bytes)  # ... but its process is gone
    # at once: not after champion.LEASE_WAIT_S (180 s) of waiting; the margin is for a loaded machine
    assert time.monotonic() - t0 < 60 and store.read_json(layout.lease_key(MODEL, 2))["broke"]["owner"] == held["owner"]


def test_waiting_for_a_held_lease_times_out_naming_the_holder(tmp_path):
    store = open_store(str(tmp_path / "s"))
    with champion.lease(store, MODEL, purpose="promote v7"):
        with pytest.raises(champion.LeaseTimeoutError, match=r"held by \S+:\d+:\d+ \(promote v7\)"):
            with champion.lease(store, MODEL, purpose="rollback", timeout_s=0.3):
                pass
    with champion.lease(store, MODEL, purpose="rollback", timeout_s=0.3) as held:  # free again
        assert held["purpose"] == "rollback"
