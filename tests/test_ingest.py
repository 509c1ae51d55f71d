import pyarrow.parquet as pq
import pytest

from flywheel import ingest, layout
from flywheel.config import load_settings
from flywheel.report import status as status_report
from tests.conftest import jpeg, make_clip


def _land(store, n, start=0, **kw):
    keys = []
    for i in range(start, start + n):
        key = f"landing/veh-1/2026-11-01/c{i:03d}.mcap"
        store.write_bytes(key, make_clip(f"c{i:03d}", image=jpeg(i), **kw))
        keys.append(key)
    return keys


def test_only_mcap_names_are_clips(store):
    _land(store, 2)
    store.write_bytes("landing/veh-1/2026-11-01/c9.mcap.part", b"partial")
    store.write_bytes("landing/veh-1/2026-11-01/.hidden.mcap", b"x")
    store.write_bytes("landing/veh-1/2026-11-01/notes.tmp", b"x")
    assert len(ingest.pending_clips(store)) == 2


def test_plan_waits_for_the_threshold_and_claims_once(store):
    _land(store, 3)
    assert ingest.plan_batch(store, min_clips=4, max_clips=10) is None
    _land(store, 1, start=3)
    plan = ingest.plan_batch(store, min_clips=4, max_clips=10)
    assert len(plan.clips) == 4
    assert ingest.commit_batch(store, plan)["batch_id"] == plan.batch_id
    # same clips, same id: a second planner that saw them makes the same batch
    assert ingest.commit_batch(store, plan)["batch_id"] == plan.batch_id
    assert ingest.pending_clips(store) == []
    assert ingest.plan_batch(store, min_clips=1, max_clips=10) is None


def test_duplicate_uploads_are_ingested_once(store):
    _land(store, 2)
    store.write_bytes("landing/veh-2/2026-11-02/copy.mcap", store.read_bytes("landing/veh-1/2026-11-01/c000.mcap"))
    plan = ingest.plan_batch(store, min_clips=2, max_clips=10)
    assert len(plan.clips) == 2 and len(plan.duplicates) == 1
    ingest.commit_batch(store, plan)
    # ... and the same content in a later upload is still a duplicate
    store.write_bytes("landing/veh-3/2026-11-03/again.mcap", store.read_bytes("landing/veh-1/2026-11-01/c001.mcap"))
    assert ingest.plan_batch(store, min_clips=1, max_clips=10) is None
    _land(store, 1, start=5)
    later = ingest.plan_batch(store, min_clips=1, max_clips=10)
    assert [c["key"] for c in later.clips] == ["landing/veh-1/2026-11-01/c005.mcap"]
    assert [d["key"] for d in later.duplicates] == ["landing/veh-3/2026-11-03/again.mcap"]
    assert later.duplicates[0]["same_as"] == "an earlier batch"


def test_bad_clips_are_quarantined_and_the_batch_goes_on(store):
    settings = load_settings(**{"ingest.max_pixels": 48 * 48})
    _land(store, 3)
    store.write_bytes("landing/veh-1/2026-11-01/broken.mcap", make_clip("broken")[:300])
    store.write_bytes("landing/veh-1/2026-11-01/huge.mcap", make_clip("huge", image=jpeg(h=80, w=80)))
    plan = ingest.plan_batch(store, min_clips=5, max_clips=10)
    ingest.commit_batch(store, plan)
    report = ingest.validate_batch(store, plan.batch_id, settings)
    assert len(report["accepted"]) == 3
    assert {q["reason"] for q in report["quarantined"]} == {"truncated", "image_too_large"}
    # moved, never lost: the bytes and a reason are in quarantine/
    assert not store.exists("landing/veh-1/2026-11-01/broken.mcap")
    assert store.exists("quarantine/veh-1/2026-11-01/broken.mcap")
    reason = store.read_json("quarantine/veh-1/2026-11-01/broken.mcap.reason.json")
    assert reason["reason"] == "truncated" and reason["batch_id"] == plan.batch_id
    # a retried validation gives the same answer
    again = ingest.validate_batch(store, plan.batch_id, settings)
    assert len(again["accepted"]) == 3 and len(again["quarantined"]) == 2

    summary = ingest.write_frames(store, plan.batch_id, settings)
    assert summary["frames"] == 9 and summary["clips"] == 3
    table = store.read_parquet(layout.frames_key(plan.batch_id))
    assert table.column("frame_id").to_pylist()[:3] == ["c000/front/0", "c000/front/1", "c000/front/2"]
    assert table.column("image")[0].as_py() == jpeg(0)  # stored as uploaded
    assert set(table.column("ground_truth").to_pylist()) == {"vehicle"}
    status = status_report(store, settings)
    assert status["frames"] == 9 and status["quarantined"] == 2 and status["pending_clips"] == 0


def test_frames_parquet_has_no_image_statistics(tmp_path):
    from flywheel.store import open_store

    store = open_store(str(tmp_path / "s"))
    _land(store, 2)
    plan = ingest.plan_batch(store, min_clips=2, max_clips=10)
    ingest.commit_batch(store, plan)
    ingest.validate_batch(store, plan.batch_id, load_settings())
    ingest.write_frames(store, plan.batch_id, load_settings())
    meta = pq.ParquetFile(store.path / layout.frames_key(plan.batch_id)).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    rg = meta.row_group(0)
    assert rg.column(names.index("image")).statistics is None
    assert rg.column(names.index("frame_id")).statistics is not None


def test_missing_batch_names_it(store):
    with pytest.raises(FileNotFoundError, match="batches/nope.json"):
        ingest.validate_batch(store, "nope", load_settings())
