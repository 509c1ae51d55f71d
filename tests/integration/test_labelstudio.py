"""The human queue on a real Label Studio server (label-studio from PyPI, in its own environment,
started on 127.0.0.1 by this module): queue → a person annotates through the API → the sensor →
the batch's labels → the next dataset version; a late correction revises the batch in the version
after, and the older version keeps its labels."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import requests

from flywheel import ingest, layout, stages
from flywheel.config import load_settings
from flywheel.data import dataset
from flywheel.data.diff import diff_versions
from flywheel.definitions import build_definitions
from flywheel.ingest import commit_batch, plan_batch
from flywheel.labeling import labelstudio, labelstudio_server, labelstudio_sync
from flywheel.labeling.queue import read_exports, write_queue
from flywheel.sim import simulate
from flywheel.store import open_store
from resources import resources_for
from sensors.labeling import label_studio_answers
from tests.conftest import free_port, wait_for_port
from tests.integration.conftest import TINY

# one worker runs these (pytest-xdist --dist loadgroup): the server keeps one data dir between tests
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("label-studio")]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """One server for the session (the xdist group keeps these tests on one worker, but other tests may run
    between them there: a module-scoped server was started twice), its data folder kept between tests;
    every store lies under its local-files document root (pytest's base temp folder)."""
    exe = labelstudio_server.ensure_installed()
    server = labelstudio_server.start(data_dir=tmp_path_factory.mktemp("label-studio"), port=free_port(),
                                      document_root=tmp_path_factory.getbasetemp(), exe=exe)  # fmt: skip
    yield server
    server.stop()


def _cmdlines() -> list[bytes]:
    """Every process's command line on this machine (what `ps` shows anyone)."""
    out = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(path.read_bytes())
        except OSError:  # gone since the listing
            pass
    return out


def _tick(instance, overrides):
    resources = resources_for(None, overrides)
    with dg.build_sensor_context(instance=instance, resources={k: resources[k] for k in ("settings", "store")}) as context:
        return label_studio_answers(context)


def _relabel(defs, instance, request) -> None:
    result = defs.resolve_job_def("relabel_batch").execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags
    )
    assert result.success


def test_answers_in_label_studio_reach_the_next_dataset_version(label_studio, tmp_path_factory, monkeypatch):
    # the server called no one at its start: no version check on pypi.org (its log names the address when it does)
    assert "Database and media directory" in label_studio.log.read_text()
    assert "pypi.org" not in label_studio.log.read_text()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    overrides = {**TINY, "engine.enabled": True, "engine.label_budget": 6, "labelstudio.url": label_studio.url,
                 "labelstudio.project": f"flywheel test {uuid.uuid4().hex[:6]}", "labelstudio.settle_s": 0,
                 "labelstudio.document_root": str(tmp_path_factory.getbasetemp())}  # fmt: skip
    settings = load_settings(**overrides)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=overrides)
    with dg.instance_for_test() as instance:
        simulate(store, settings, clips=4, seed=0)
        plan = plan_batch(store, min_clips=1, max_clips=100)
        commit_batch(store, plan)
        batch = plan.batch_id
        instance.add_dynamic_partitions("fleet_batches", [batch])
        assert defs.resolve_job_def("ingest_batch").execute_in_process(instance=instance, partition_key=batch).success
        queued = store.read_json(layout.queue_key(batch))
        assert len(queued) == 6

        # the sensor imports the queue; nothing is answered yet
        skip = _tick(instance, overrides)
        assert isinstance(skip, dg.SkipReason) and "6 task(s) imported" in skip.skip_message
        sync = labelstudio_sync.from_settings(settings)
        tasks = sync._tasks(sync.project_id())
        assert sorted(t["data"]["frame_id"] for t in tasks) == sorted(t["data"]["frame_id"] for t in queued)
        image = requests.get(label_studio.url + tasks[0]["data"]["image"],
                             headers={"Authorization": f"Token {label_studio.token}"}, timeout=30)  # fmt: skip
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"  # the JPEG, served from the store

        # a person answers every task with what the frame shows
        frames = store.read_parquet(layout.frames_key(batch), columns=["frame_id", "ground_truth"])
        truth = dict(zip(frames.column("frame_id").to_pylist(), frames.column("ground_truth").to_pylist(), strict=True))
        for t in tasks:
            sync.client.annotations.create(id=t["id"], result=labelstudio.choice_result(truth[t["data"]["frame_id"]]))
        result = _tick(instance, overrides)
        [request] = result.run_requests
        assert request.partition_key == batch and request.tags["flywheel/answers"] == "6"
        _relabel(defs, instance, request)
        labels = store.read_parquet(layout.labels_key(batch))
        human = {f: c for f, c, s in zip(*(labels.column(n).to_pylist() for n in ("frame_id", "label", "label_source")),
                                         strict=True) if s == "human"}  # fmt: skip
        assert human == {fid: settings.classes.index(truth[fid]) for fid in human} and len(human) == 6
        v1, created = stages.build_dataset_version(store, settings)
        assert created and v1["counts"]["rows"] >= 6
        assert isinstance(_tick(instance, overrides), dg.SkipReason)  # every answer is in the labels now

        # days later the person corrects one answer: the batch is revised in v2, v1 keeps the old label
        fid = tasks[0]["data"]["frame_id"]
        wrong = next(c for c in settings.classes if c != truth[fid])
        [annotation] = sync._tasks(sync.project_id())[0]["annotations"]
        sync.client.annotations.update(id=annotation["id"], result=labelstudio.choice_result(wrong))
        [request] = _tick(instance, overrides).run_requests
        _relabel(defs, instance, request)
        assert dataset.waiting_batches(store, settings.dataset.name)[1] == [batch]
        v2, created = stages.build_dataset_version(store, settings)
        assert created and v2["revised_batches"] == [batch] and v2["new_batches"] == []
        changed = diff_versions(store, settings.dataset.name, 1, 2)
        assert changed["labels_changed"] == 1 and changed["changed"][0]["frame_id"] == fid
        assert changed["changed"][0]["after"] == wrong
        assert dataset.verify_shards(store, v1) == []  # the older version is whole and unchanged


def test_ui_starts_label_studio_beside_dagster_and_stops_both(flywheel_home, label_studio):
    """`flywheel ui --label-studio`: Label Studio answers its token, Dagster lists the answers sensor;
    Ctrl-C stops both. (`label_studio` only makes sure the environment is built.)"""
    ls_port, ui_port = free_port(), free_port()
    env = {**os.environ, "FLYWHEEL_HOME": str(flywheel_home)}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "ui", "--port", str(ui_port), "--label-studio",
         "--label-studio-port", str(ls_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_port(ui_port, timeout=300, proc=proc)  # Label Studio first: its port is up before Dagster's
        token = (flywheel_home / "labelstudio" / "flywheel-token").read_text().strip()
        projects = requests.get(f"http://127.0.0.1:{ls_port}/api/projects",
                                headers={"Authorization": f"Token {token}"}, timeout=30)  # fmt: skip
        assert projects.status_code == 200
        # secrets stay off every command line (anyone on the machine can read those)
        cmdlines = _cmdlines()
        assert any(b"label-studio" in c for c in cmdlines) and not any(token.encode() in c for c in cmdlines)
        password = labelstudio_server.password_file(flywheel_home / "labelstudio")
        assert password.stat().st_mode & 0o777 == 0o600
        query = "{ sensorsOrError(repositorySelector: {repositoryName: \"__repository__\", " \
                "repositoryLocationName: \"flywheel.definitions\"}) { ... on Sensors { results { name } } } }"
        deadline, names = time.monotonic() + 120, []
        while not names and time.monotonic() < deadline:  # the code location may still be loading
            body = requests.post(f"http://127.0.0.1:{ui_port}/graphql", json={"query": query}, timeout=30).json()
            names = [r["name"] for r in ((body.get("data") or {}).get("sensorsOrError") or {}).get("results", [])]
            time.sleep(1)
        assert "label_studio_answers" in names
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"Label Studio on http://127.0.0.1:{ls_port}" in out
    assert password.read_text().strip() not in out and token not in out  # the terminal shows where, not what
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", ls_port)) != 0  # stopped with the UI


def test_boxes_round_trip_through_label_studio(label_studio, tmp_path_factory):
    """A detection queue in Label Studio: rectangles pre-filled with the champion's boxes; a person's boxes
    (and one "nothing here") come back in pixels of the frame; a later change of class comes back too."""
    settings = load_settings(**TINY)
    store = open_store(settings.store_root)
    simulate(store, settings, clips=3, seed=1)
    plan = plan_batch(store, min_clips=1, max_clips=100)
    commit_batch(store, plan)
    batch = plan.batch_id
    ingest.validate_batch(store, batch, settings)
    ingest.write_frames(store, batch, settings)
    frames = store.read_parquet(layout.frames_key(batch))
    rows = {r["frame_id"]: r for r in frames.select(["frame_id", "width", "height", "boxes"]).to_pylist()}
    truth = {f: [(b["label"], b["x"], b["y"], b["w"], b["h"]) for b in r["boxes"] or []] for f, r in rows.items()}
    boxed = sorted(f for f, boxes in truth.items() if boxes)[:4]
    empty = sorted(f for f in truth if f not in boxed)[0]
    assert len(boxed) == 4, "the simulated clips should show objects"
    ids = [*boxed, empty]
    champion = [[(n, 0.6, x + 3, y + 2, w, h) for n, x, y, w, h in truth[f]] for f in ids]  # a little off
    write_queue(store, batch, frames, ids, model_version="1", detection=True, box_predictions=champion)

    title = f"flywheel boxes {uuid.uuid4().hex[:6]}"
    sync = labelstudio_sync.LabelStudioSync(label_studio.url, label_studio.token, title=title, classes=settings.classes,
                                            settle_s=0, document_root=tmp_path_factory.getbasetemp(), task="detection")  # fmt: skip
    assert sync.push(store) == {batch: 5}
    pid = sync.project_id()
    assert "<RectangleLabels" in sync.client.projects.get(id=pid).label_config
    tasks = {t["data"]["frame_id"]: t for t in sync._tasks(pid)}
    assert sorted(tasks) == sorted(ids)
    for fid, boxes in zip(ids, champion, strict=True):  # pre-filled with the champion's boxes
        task, (w, h) = tasks[fid], (rows[fid]["width"], rows[fid]["height"])
        assert (task["data"]["width"], task["data"]["height"]) == (w, h)
        [prediction] = task["predictions"]
        assert prediction["score"] == pytest.approx(0.6)
        values = [r["value"] for r in prediction["result"]]
        assert [v["rectanglelabels"] for v in values] == [[b[0]] for b in boxes]
        assert [v["x"] * w / 100 for v in values] == pytest.approx([b[2] for b in boxes])
    with pytest.raises(ValueError, match="is not a classification project"):  # the same title, the other task
        labelstudio_sync.LabelStudioSync(label_studio.url, label_studio.token, title=title,
                                         classes=settings.classes).project_id()  # fmt: skip

    # a person draws the true boxes on four frames and says "nothing here" on the last
    for fid in boxed:
        result = labelstudio.box_result(truth[fid], rows[fid]["width"], rows[fid]["height"])
        sync.client.annotations.create(id=tasks[fid]["id"], result=result)
    sync.client.annotations.create(id=tasks[empty]["id"], result=[])
    [answered] = sync.pull(store, now=time.time())
    assert (answered.batch_id, answered.tasks) == (batch, 5)

    def read_back():
        return labelstudio.human_boxes(read_exports(store), settings.classes)

    def indexed(boxes):
        return [(settings.classes.index(n), x, y, w, h) for n, x, y, w, h in boxes]

    def same(got, want):
        return len(got) == len(want) and all(
            g[0] == w[0] and g[1:] == pytest.approx(w[1:], abs=0.5) for g, w in zip(got, want, strict=True)
        )

    got = read_back()
    assert got[empty] == [] and set(got) == set(ids)
    assert all(same(got[f], indexed(truth[f])) for f in boxed)

    # the labels stage of a detection flywheel with the engine on: the people's boxes are the labels of
    # those frames (the clips' own boxes stay hidden), "nothing here" an empty box set
    detection = load_settings(**TINY, **{"task": "detection", "engine.enabled": True})
    stats = stages.label_batch(store, detection, batch)
    assert stats["human"] == 5 and stats["ground_truth"] == 0
    held = {r["frame_id"]: r for r in store.read_parquet(layout.labels_key(batch)).to_pylist()}
    assert held[empty]["boxes"] == [] and held[empty]["label_source"] == "human"
    assert all(same(indexed([(b["label"], b["x"], b["y"], b["w"], b["h"]) for b in held[f]["boxes"]]), indexed(truth[f]))
               for f in boxed)  # fmt: skip
    assert labelstudio_sync.unfolded(store, settings.classes) == []  # every answer is in the labels

    # later the person changes one box's class: the export changes, and so does what it reads as
    fid = boxed[0]
    name, *box = truth[fid][0]
    other = next(c for c in settings.classes if c not in (name, "clear_road"))
    fixed = [(other, *box), *truth[fid][1:]]
    [annotation] = next(t for t in sync._tasks(pid) if t["data"]["frame_id"] == fid)["annotations"]
    sync.client.annotations.update(id=annotation["id"],
                                   result=labelstudio.box_result(fixed, rows[fid]["width"], rows[fid]["height"]))  # fmt: skip
    [again] = sync.pull(store, now=time.time())
    assert again.sha256 != answered.sha256
    got = read_back()
    assert same(got[fid], indexed(fixed)) and got[empty] == []
    assert all(same(got[f], indexed(truth[f])) for f in boxed[1:])
    # the answers sensor's question: this batch's labels lack the correction, until it is relabeled
    assert [a.batch_id for a in labelstudio_sync.unfolded(store, settings.classes)] == [batch]
    stages.label_batch(store, detection, batch)
    assert labelstudio_sync.unfolded(store, settings.classes) == []
    relabeled = {r["frame_id"]: r for r in store.read_parquet(layout.labels_key(batch)).to_pylist()}
    assert relabeled[fid]["boxes"][0]["label"] == other
