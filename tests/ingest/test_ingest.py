import functools
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from flywheel import ingest, layout, workers
from flywheel.config import load_settings
from flywheel.ingest import reading
from flywheel.report import status as status_report
from flywheel.store import open_store
from tests.conftest import chunk_clip, jpeg, make_clip, put_raw

DAY = "landing/veh-1/2026-11-01/"


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
    # a rejected duplicate says why: which earlier upload, in which batch
    assert later.duplicates[0]["same_as"] == "landing/veh-1/2026-11-01/c001.mcap"
    assert later.duplicates[0]["same_as_batch"] == plan.batch_id
    assert plan.duplicates[0]["same_as"] == "landing/veh-1/2026-11-01/c000.mcap"
    assert plan.duplicates[0]["same_as_batch"] is None  # an upload of this same batch


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


@pytest.mark.parametrize("workers", [1, 4])  # too few clips for a pool: read here either way
def test_ingest_with_progress_bars_gives_the_same_batch(tmp_path, capsys, workers):
    """A bar of the clips read goes to stderr when asked, and nothing else changes."""
    settings = load_settings(**{"ingest.workers": workers})
    quiet = open_store(str(tmp_path / "quiet"))
    _land(quiet, 3)
    quiet.write_bytes(DAY + "broken.mcap", make_clip("broken")[:300])
    plan = ingest.plan_batch(quiet, min_clips=4, max_clips=10)
    ingest.commit_batch(quiet, plan)
    shutil.copytree(tmp_path / "quiet", tmp_path / "bars")  # the same committed batch, twice
    runs = {}
    for progress, store in ((None, quiet), (True, open_store(str(tmp_path / "bars")))):
        report = ingest.validate_batch(store, plan.batch_id, settings, progress=progress)
        summary = ingest.write_frames(store, plan.batch_id, settings, progress=progress)
        table = store.read_parquet(layout.frames_key(plan.batch_id))
        runs[progress] = (report, summary, table, capsys.readouterr().err)
    (report, summary, table, err), (report2, summary2, table2, err2) = runs[None], runs[True]
    assert err == ""  # off unless asked: the Dagster assets stay quiet
    assert "validate" in err2  # the frames step parses nothing: validation staged the frames
    assert summary["source"] == "staged by the validation (one pass)"
    assert len(report["accepted"]) == 3 and [q["reason"] for q in report["quarantined"]] == ["truncated"]
    assert {**report, "seconds": 0} == {**report2, "seconds": 0}
    assert {**summary, "seconds": 0} == {**summary2, "seconds": 0}
    assert table.equals(table2)


def test_a_clip_id_seen_twice_in_a_batch_keeps_its_first_clip_and_only_its_frames(store):
    """Two uploads of different content that carry the same clip_id: the first (in the batch's
    order) is the clip, the second is named in `duplicate_clip_ids` and none of its frames are
    staged or committed."""
    settings = load_settings(**{"ingest.workers": 1})
    _land(store, 2)
    store.write_bytes(DAY + "c999.mcap", make_clip("c000", n=5, image=jpeg(9)))  # same id, other frames
    plan = ingest.plan_batch(store, min_clips=3, max_clips=10)
    ingest.commit_batch(store, plan)
    report = ingest.validate_batch(store, plan.batch_id, settings)
    assert report["duplicate_clip_ids"] == ["c000"]
    assert [c["key"] for c in report["accepted"]] == [DAY + "c000.mcap", DAY + "c001.mcap"]
    ingest.write_frames(store, plan.batch_id, settings)
    table = store.read_parquet(layout.frames_key(plan.batch_id))
    assert set(table["clip_key"].to_pylist()) == {DAY + "c000.mcap", DAY + "c001.mcap"}
    assert table.num_rows == report["staged_frames"] == 6 and jpeg(9) not in table["image"].to_pylist()


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



# ---------------------------------------------------------------- landing hygiene


@pytest.mark.timeout(60)  # a FIFO named *.mcap used to hang the read forever
def test_landing_junk_neither_crashes_nor_hangs_ingest(tmp_path):
    store = open_store(str(tmp_path / "store"))
    keys = _land(store, 2)
    day = store.path / DAY
    (tmp_path / "outside.mcap").write_bytes(make_clip("outside"))
    (day / "dead.mcap").symlink_to(tmp_path / "nowhere.mcap")
    (day / "out.mcap").symlink_to(tmp_path / "outside.mcap")
    os.mkfifo(day / "pipe.mcap")
    (day / "my clip.mcap").write_bytes(make_clip("spaced"))
    assert [o.key for o in ingest.pending_clips(store)] == keys
    plan = ingest.plan_batch(store, min_clips=2, max_clips=10)
    assert [c["key"] for c in plan.clips] == keys
    ingest.commit_batch(store, plan)
    status = status_report(store, load_settings())
    assert status["pending_clips"] == 0
    quarantined = [(q["key"], q["reason"]) for q in status["quarantine"]]
    assert quarantined == [(DAY + "my clip.mcap", "bad_key")]


def test_a_name_that_cannot_be_a_key_is_quarantined_and_can_come_back(store):
    keys = _land(store, 1)
    raw = DAY + "my clip.mcap"
    put_raw(store, raw, make_clip("spaced"))
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10)
    assert [c["key"] for c in plan.clips] == keys
    ingest.commit_batch(store, plan)
    [reason] = [o.key for o in store.list(layout.QUARANTINE) if o.key.endswith(".reason.json")]
    record = store.read_json(reason)
    assert record["reason"] == "bad_key" and record["key"] == raw
    assert "my clip.mcap" in record["detail"] and store.exists(record["quarantined_as"])
    assert not any(o.bad_key for o in store.list(layout.LANDING))
    # re-admitted under a name that is a key (asked for by the name the fleet gave it)
    done = ingest.requeue(store, raw)
    [(_, back)] = done["moved"]
    assert back.startswith(DAY + "my_clip") and back.endswith(".mcap")
    assert [o.key for o in ingest.pending_clips(store)] == [back]
    assert store.list(layout.QUARANTINE) == []


# ---------------------------------------------------------------- decompression bombs


def test_a_decompression_bomb_is_quarantined_in_bounded_memory(tmp_path):
    import zstandard

    size = 3 * 2**29  # 1.5 GiB of zeros in 48 KB: what pushed ingest to 3.7 GB RSS
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, size=size, closefd=False) as w:
        block = bytes(2**24)
        for _ in range(size // len(block)):
            w.write(block)
    store = open_store(str(tmp_path / "store"))
    _land(store, 1)
    store.write_bytes(DAY + "bomb.mcap", chunk_clip(out.getvalue(), uncompressed_size=size))
    assert store.list(DAY + "bomb")[0].size < 64 * 1024
    child = textwrap.dedent("""
        import json, sys
        from flywheel import ingest
        from flywheel.config import load_settings
        from flywheel.store import open_store

        store = open_store(sys.argv[1])
        plan = ingest.plan_batch(store, min_clips=2, max_clips=10)
        ingest.commit_batch(store, plan)
        report = ingest.validate_batch(store, plan.batch_id, load_settings())
        # VmHWM: this process's own peak (ru_maxrss would count the forking pytest process's size too)
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
        rss = int(hwm.split()[1]) * 1024  # kB
        accepted = len(report["accepted"])
        print(json.dumps({"quarantined": report["quarantined"], "accepted": accepted, "rss": rss}))
    """)
    run = subprocess.run(
        [sys.executable, "-c", child, str(store.path)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["rss"] < 2**30, f"peak RSS {result['rss'] / 2**20:.0f} MiB quarantining a bomb"
    assert result["accepted"] == 1
    assert [(q["key"], q["reason"]) for q in result["quarantined"]] == [
        (DAY + "bomb.mcap", "chunk_too_large")
    ]


# ---------------------------------------------------------------- batches never overlap


@pytest.mark.parametrize("first", ["a", "b"])
def test_two_planners_over_different_listings_never_share_a_clip(store, first):
    _land(store, 6)
    a = ingest.plan_batch(store, min_clips=1, max_clips=100)  # c000-c005
    _land(store, 6, start=6)
    b = ingest.plan_batch(store, min_clips=1, max_clips=8)  # saw more: c000-c007
    assert len(a.clips) == 6 and len(b.clips) == 8
    plans = {"a": a, "b": b}
    order = [first, "b" if first == "a" else "a"]
    committed = {name: ingest.commit_batch(store, plans[name]) for name in order}
    if first == "b":
        assert committed["a"] is None  # every clip of a is taken: a loses cleanly
    else:
        smaller = committed["b"]  # b keeps the two clips a did not take
        got = [c["key"] for c in smaller["clips"]]
        assert got == [DAY + "c006.mcap", DAY + "c007.mcap"]
        assert smaller["batch_id"] != b.batch_id
        assert smaller["batch_id"].endswith(ingest.sha256("\n".join(sorted(got)).encode())[:8])
    # committing the same plan again is the same batch (or the same None)
    assert {n: ingest.commit_batch(store, plans[n]) for n in order} == committed
    held = [c["key"] for m in ingest.list_batches(store) for c in m["clips"] + m["duplicates"]]
    assert len(held) == len(set(held)) == 8
    pending = [o.key for o in ingest.pending_clips(store)]
    assert pending == [DAY + f"c{i:03d}.mcap" for i in range(8, 12)]


class Crash(Exception):
    pass


KILL_POINTS = {  # (store method, which keys, the nth such call raises)
    "plan written, no claim": ("create", lambda k: k.startswith(layout.CLAIMS), 1),
    "some claims": ("create", lambda k: k.startswith(layout.CLAIMS), 3),
    "claims, no manifest": ("create", layout.is_batch_key, 1),
    "manifest, plan left": ("delete", lambda k: k.startswith(layout.BATCHES), 1),
}


@pytest.mark.parametrize("kill", sorted(KILL_POINTS))
def test_a_commit_killed_midway_is_finished_by_the_next_planner(tmp_path, monkeypatch, kill):
    store = open_store(str(tmp_path / "store"))
    keys = _land(store, 6)
    method, which, nth = KILL_POINTS[kill]
    real, calls = getattr(store, method), []

    def dies(key, *args):
        if which(key):
            calls.append(key)
            if len(calls) == nth:
                raise Crash(key)
        return real(key, *args)

    plan = ingest.plan_batch(store, min_clips=1, max_clips=100)
    monkeypatch.setattr(store, method, dies)
    with pytest.raises(Crash):
        ingest.commit_batch(store, plan)
    monkeypatch.undo()
    _land(store, 2, start=6)  # more uploads meanwhile
    again = ingest.plan_batch(store, min_clips=1, max_clips=100)
    if kill != "manifest, plan left":  # (that one only had its plan record left to delete)
        assert again == plan  # the unfinished commit comes first ...
        assert ingest.commit_batch(store, again)["batch_id"] == plan.batch_id  # ... and is finished
        again = ingest.plan_batch(store, min_clips=1, max_clips=100)
    batches = ingest.list_batches(store)
    assert [m["batch_id"] for m in batches] == [plan.batch_id]
    assert [c["key"] for c in batches[0]["clips"]] == keys
    assert [c["key"] for c in again.clips] == [DAY + "c006.mcap", DAY + "c007.mcap"]
    assert [o.key for o in store.list(layout.BATCHES)] == [layout.batch_key(plan.batch_id)]


# ---------------------------------------------------------------- re-admission


def test_a_fixed_upload_under_the_same_key_passes(store):
    settings = load_settings()
    _land(store, 2)
    store.write_bytes(DAY + "c009.mcap", make_clip("c009")[:300])
    store.write_bytes(DAY + "dots.mcap", make_clip(".."))  # used to fail the whole batch's labels
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10)
    ingest.commit_batch(store, plan)
    report = ingest.validate_batch(store, plan.batch_id, settings)
    assert {q["key"]: q["reason"] for q in report["quarantined"]} == {
        DAY + "c009.mcap": "truncated", DAY + "dots.mcap": "bad_clip_id",
    }  # fmt: skip
    store.write_bytes(DAY + "c009.mcap", make_clip("c009", image=jpeg(9)))  # uploaded again, whole
    assert [o.key for o in ingest.pending_clips(store)] == [DAY + "c009.mcap"]
    fixed = ingest.plan_batch(store, min_clips=1, max_clips=10)
    ingest.commit_batch(store, fixed)
    report = ingest.validate_batch(store, fixed.batch_id, settings)
    assert [c["key"] for c in report["accepted"]] == [DAY + "c009.mcap"]
    # a retry of the first batch does not take the new upload back
    again = ingest.validate_batch(store, plan.batch_id, settings)
    assert len(again["accepted"]) == 2 and len(again["quarantined"]) == 2


def test_the_first_validation_reads_no_claim_and_a_later_one_reads_each(store, monkeypatch):
    """Only a validation releases a committed clip's claim, so the first one of a batch reads none
    (a request per clip less); once one has begun, the next reads each claim (the retry above must
    not take a new upload back)."""
    settings = load_settings(**{"ingest.workers": 1})
    keys = _land(store, 3)
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10)
    ingest.commit_batch(store, plan)
    read, reads = store.read_bytes, []
    monkeypatch.setattr(store, "read_bytes", lambda key: reads.append(key) or read(key))
    first = ingest.validate_batch(store, plan.batch_id, settings)
    assert [k for k in reads if k.startswith(layout.CLAIMS)] == [] and len(first["accepted"]) == 3
    reads.clear()
    again = ingest.validate_batch(store, plan.batch_id, settings)
    assert sorted(k for k in reads if k.startswith(layout.CLAIMS)) == sorted(layout.claim_key(k) for k in keys)
    assert again["accepted"] == first["accepted"]


def _quarantine_too_large(store, *keys, same_bytes=False):
    """A batch of two good clips and `keys` (a big image each), validated under a small limit."""
    _land(store, 2)
    for i, key in enumerate(keys):
        store.write_bytes(key, make_clip(f"big{0 if same_bytes else i}", image=jpeg(h=80, w=80)))
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10)
    ingest.commit_batch(store, plan)
    small = load_settings(**{"ingest.max_pixels": 48 * 48})
    report = ingest.validate_batch(store, plan.batch_id, small)
    return plan, report


def test_the_bytes_of_a_quarantined_clip_pass_under_a_new_key(store):
    plan, report = _quarantine_too_large(store, DAY + "big.mcap")
    assert [q["reason"] for q in report["quarantined"]] == ["image_too_large"]
    same = store.read_bytes("quarantine/veh-1/2026-11-01/big.mcap")
    store.write_bytes("landing/veh-1/2026-11-02/big.mcap", same)
    later = ingest.plan_batch(store, min_clips=1, max_clips=10)
    assert [c["key"] for c in later.clips] == ["landing/veh-1/2026-11-02/big.mcap"]
    assert later.duplicates == []


def test_requeue_moves_a_quarantined_clip_back_to_landing(store):
    big, other = DAY + "big.mcap", DAY + "other.mcap"
    plan, _ = _quarantine_too_large(store, big, other)
    done = ingest.requeue(store, big)
    assert done["moved"] == [(layout.quarantine_key(big), big)]
    assert layout.reason_key(big) in done["removed"]
    assert store.exists(big) and not store.exists(layout.reason_key(big))
    # ... asked for by its quarantine key as well
    done = ingest.requeue(store, layout.quarantine_key(other))
    assert done["moved"] == [(layout.quarantine_key(other), other)]
    assert status_report(store, load_settings())["quarantined"] == 0
    # the limit was raised: both pass now
    again = ingest.plan_batch(store, min_clips=1, max_clips=10)
    assert sorted(c["key"] for c in again.clips) == [big, other]
    ingest.commit_batch(store, again)
    assert len(ingest.validate_batch(store, again.batch_id, load_settings())["accepted"]) == 2


def test_requeue_releases_a_duplicate_whose_original_was_quarantined(store):
    copy = "landing/veh-2/2026-11-02/copy.mcap"
    plan, _ = _quarantine_too_large(store, DAY + "big.mcap", copy, same_bytes=True)
    assert [d["key"] for d in plan.duplicates] == [copy]
    # held as a duplicate of a clip that was then quarantined
    assert ingest.pending_clips(store) == []
    assert ingest.requeue(store, copy) == {"moved": [], "removed": [layout.claim_key(copy)]}
    later = ingest.plan_batch(store, min_clips=1, max_clips=10)
    assert [c["key"] for c in later.clips] == [copy]


def test_requeue_refuses_what_is_not_quarantined(store):
    plan, _ = _quarantine_too_large(store)
    with pytest.raises(ValueError, match=rf"{DAY}c000.mcap.*ingested in batch {plan.batch_id}"):
        ingest.requeue(store, DAY + "c000.mcap")
    with pytest.raises(ValueError, match=rf"{DAY}nope.mcap.*nothing to requeue"):
        ingest.requeue(store, DAY + "nope.mcap")
    with pytest.raises(ValueError, match="frames/x.parquet.*landing/ or quarantine/"):
        ingest.requeue(store, "frames/x.parquet")


def test_requeue_command(flywheel_home):
    from click.testing import CliRunner

    from flywheel.cli import main

    store = open_store(str(flywheel_home))
    _quarantine_too_large(store, DAY + "big.mcap")
    out = CliRunner().invoke(main, ["requeue", DAY + "big.mcap"])
    assert out.exit_code == 0, out.output
    assert f"moved quarantine/veh-1/2026-11-01/big.mcap -> {DAY}big.mcap" in out.output
    assert store.exists(DAY + "big.mcap")
    out = CliRunner().invoke(main, ["requeue", DAY + "big.mcap"])
    assert out.exit_code != 0 and "nothing to requeue" in out.output
    assert "flywheel requeue landing/" in CliRunner().invoke(main, ["requeue", "--help"]).output


def test_one_pass_on_worker_processes_gives_the_frames_of_a_second_parse(store, monkeypatch):
    """40 clips and a broken one on 2 worker processes (the S3 store is pickled to them): validation
    stages the frames; they equal what parsing the accepted clips again gives; the staged file is
    gone once the frames are committed."""
    monkeypatch.setattr(reading, "MIN_CLIPS_PER_WORKER", {"fork": 16, "exec": 16})  # a pool for 41 clips
    settings = load_settings(**{"ingest.workers": 2})
    _land(store, 40)
    store.write_bytes(DAY + "broken.mcap", make_clip("broken")[:300])
    plan = ingest.plan_batch(store, min_clips=41, max_clips=100)
    ingest.commit_batch(store, plan)
    report = ingest.validate_batch(store, plan.batch_id, settings)
    assert len(report["accepted"]) == 40 and [q["reason"] for q in report["quarantined"]] == ["truncated"]
    assert report["staged_frames"] == sum(c["frames"] for c in report["accepted"])
    # the worker's side in a worker process for sure (this process may have done every clip itself):
    # the S3 store and the read options travel to it, and it parses as this process does
    clip = {k: report["accepted"][0][k] for k in ("key", "sha256", "size")}
    check = functools.partial(reading.check_clips, store, reading.read_options(settings), [plan.batch_id], plan.batch_id)
    for start in ("fork", "exec"):
        worker = workers.Worker(start)
        try:
            worker.send(check, [clip])
            [(verdict, entry, _)], frames = worker.receive()
        finally:
            worker.close()
        assert verdict == "ok" and entry == report["accepted"][0] and frames.num_rows == entry["frames"]
        assert set(frames["clip_key"].to_pylist()) == {clip["key"]}
    again = ingest.frames_table(store, plan.batch_id, load_settings(**{"ingest.workers": 1}))
    summary = ingest.write_frames(store, plan.batch_id, settings)
    assert summary["source"] == "staged by the validation (one pass)"
    assert store.read_parquet(layout.frames_key(plan.batch_id)).equals(again)
    assert not store.exists(layout.staged_frames_key(plan.batch_id))
    # a retry of the frames step, the staged file gone: it parses the clips again, same frames
    retry = ingest.write_frames(store, plan.batch_id, settings)
    assert retry["source"] == "parsed again" and store.read_parquet(layout.frames_key(plan.batch_id)).equals(again)


def test_hostile_clips_beside_good_ones_are_quarantined_and_the_good_ones_ingested(store):
    """A many-chunk bomb, malformed JSON and protobuf messages, odd camera names and formats: each
    quarantines its own clip with a reason, and the batch's good clips become frames."""
    from tests.test_clips import BAD

    settings = load_settings()
    _land(store, 3)
    hostile = {"bomb": "too_large", "undecodable_message": "undecodable_message",
               "undecodable_message-nested": "undecodable_message", "undecodable_message-protobuf": "undecodable_message",
               "undecodable_message-data-type": "undecodable_message", "bad_camera": "bad_camera"}  # fmt: skip
    for case in hostile:
        store.write_bytes(f"{DAY}{case}.mcap", BAD["too_large" if case == "bomb" else case]())
    store.write_bytes(DAY + "upper.mcap", make_clip("upper", fmt="JPG", image=jpeg(7)))  # a format to canonicalize
    plan = ingest.plan_batch(store, min_clips=1, max_clips=20)
    ingest.commit_batch(store, plan)
    report = ingest.validate_batch(store, plan.batch_id, settings)
    assert {q["key"].removeprefix(DAY): q["reason"] for q in report["quarantined"]} == {
        f"{case}.mcap": reason for case, reason in hostile.items()
    }
    assert len(report["accepted"]) == 4
    summary = ingest.write_frames(store, plan.batch_id, settings)
    assert summary["clips"] == 4 and summary["frames"] == 12
    table = store.read_parquet(layout.frames_key(plan.batch_id))
    assert set(table.column("format").to_pylist()) == {"jpeg"}


def test_a_clip_over_the_size_limit_is_quarantined_unread(store, monkeypatch):
    settings = load_settings(**{"ingest.max_clip_bytes": 4096})
    _land(store, 2)
    store.write_bytes(DAY + "big.mcap", make_clip("big", n=8, image=jpeg(h=200, w=200)))
    read = []
    real = store.read_bytes
    monkeypatch.setattr(store, "read_bytes", lambda key: read.append(key) or real(key))
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10, max_clip_bytes=settings.ingest.max_clip_bytes)
    ingest.commit_batch(store, plan)
    report = ingest.validate_batch(store, plan.batch_id, settings)
    assert [(q["key"], q["reason"]) for q in report["quarantined"]] == [(DAY + "big.mcap", "too_large")]
    assert DAY + "big.mcap" not in read  # neither the plan nor the validation read it
    assert len(report["accepted"]) == 2


def test_a_clip_whose_bytes_changed_since_it_was_planned_is_quarantined(store):
    settings = load_settings()
    _land(store, 2)
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10)
    ingest.commit_batch(store, plan)
    store.write_bytes(DAY + "c001.mcap", make_clip("c001", image=jpeg(99)))  # overwritten after planning
    report = ingest.validate_batch(store, plan.batch_id, settings)
    assert [(q["key"], q["reason"]) for q in report["quarantined"]] == [(DAY + "c001.mcap", "changed_since_planned")]


def test_a_clip_id_reused_by_a_later_upload_is_quarantined(store):
    """Another vehicle's clip under an id already ingested would share its frame ids, and with them
    the first clip's human labels and golden-set membership: it is quarantined instead."""
    settings = load_settings()
    _land(store, 2)
    first = ingest.plan_batch(store, min_clips=1, max_clips=10)
    ingest.commit_batch(store, first)
    ingest.validate_batch(store, first.batch_id, settings)
    store.write_bytes("landing/veh-9/2026-11-02/c000.mcap", make_clip("c000", image=jpeg(50)))  # other bytes, same id
    _land(store, 1, start=5)
    later = ingest.plan_batch(store, min_clips=1, max_clips=10)
    ingest.commit_batch(store, later)
    report = ingest.validate_batch(store, later.batch_id, settings)
    assert [(q["key"], q["reason"]) for q in report["quarantined"]] == [
        ("landing/veh-9/2026-11-02/c000.mcap", "duplicate_clip_id")
    ]
    assert [c["clip_id"] for c in report["accepted"]] == ["c005"]
    summary = ingest.write_frames(store, later.batch_id, settings)
    assert summary["clips"] == 1 and summary["frames"] == 3  # none of the reused id's frames
    # a retried validation of the first batch does not count its own ids against itself
    assert len(ingest.validate_batch(store, first.batch_id, settings)["accepted"]) == 2


def _outside_clip(clip_id: str, boxes: list[tuple[float, float, float, float, str]]) -> bytes:
    """A clip as a fleet's own logger writes it, with the public libraries only (no flywheel code):
    two 48x48 protobuf camera frames, a ground-truth label per frame, and Foxglove ImageAnnotations
    boxes on the first frame, a LINE_LOOP and a text (`<class>` or `<class>#<track>`) per object."""
    from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
    from foxglove_schemas_protobuf.ImageAnnotations_pb2 import ImageAnnotations
    from foxglove_schemas_protobuf.PointsAnnotation_pb2 import PointsAnnotation
    from mcap.writer import Writer
    from mcap_protobuf.schema import build_file_descriptor_set

    out = io.BytesIO()
    w = Writer(out)
    w.start()

    def channel(topic, encoding, name, schema_encoding, schema):
        return w.register_channel(topic, encoding, w.register_schema(name, schema_encoding, schema))

    camera = channel("/camera/front", "protobuf", "foxglove.CompressedImage", "protobuf",
                     build_file_descriptor_set(CompressedImage).SerializeToString())  # fmt: skip
    shapes = channel("/ground_truth/boxes/front", "protobuf", "foxglove.ImageAnnotations", "protobuf",
                     build_file_descriptor_set(ImageAnnotations).SerializeToString())  # fmt: skip
    truth = channel("/ground_truth", "json", "flywheel.GroundTruth", "jsonschema", b"{}")
    for t in (1_000, 2_000):
        image = CompressedImage(frame_id="front", format="jpeg", data=jpeg(t, h=48, w=48))
        w.add_message(camera, log_time=t, publish_time=t, data=image.SerializeToString())
        w.add_message(truth, log_time=t, publish_time=t, data=json.dumps({"label": "vehicle"}).encode())
    annotations = ImageAnnotations()
    for x, y, bw, bh, text in boxes:
        loop = annotations.points.add(type=PointsAnnotation.LINE_LOOP)
        for px, py in ((x, y), (x + bw, y), (x + bw, y + bh), (x, y + bh)):
            loop.points.add(x=px, y=py)
        annotations.texts.add(text=text)
    w.add_message(shapes, log_time=1_000, publish_time=1_000, data=annotations.SerializeToString())
    w.add_metadata("clip", {"clip_id": clip_id, "vehicle_id": "veh-1"})
    w.finish()
    return out.getvalue()


def test_clips_with_boxes_from_an_outside_writer_ingest_and_a_bad_box_is_quarantined(store):
    settings = load_settings()
    store.write_bytes(DAY + "boxed.mcap", _outside_clip("boxed", [(4, 6, 20, 12.5, "vehicle#3"), (30, 2, 8, 30, "pedestrian")]))
    store.write_bytes(DAY + "off.mcap", _outside_clip("off", [(40, 6, 20, 12, "vehicle")]))  # 48 px wide: beyond its edge
    plan = ingest.plan_batch(store, min_clips=2, max_clips=10)
    ingest.commit_batch(store, plan)
    report = ingest.validate_batch(store, plan.batch_id, settings)
    [bad] = report["quarantined"]
    assert bad["reason"] == "bad_boxes" and "is not inside the 48x48 frame" in bad["detail"]
    assert store.exists("quarantine/veh-1/2026-11-01/off.mcap")
    summary = ingest.write_frames(store, plan.batch_id, settings)
    assert summary["frames"] == 2 and summary["with_boxes"] == 1 and summary["with_ground_truth"] == 2
    table = store.read_parquet(layout.frames_key(plan.batch_id), columns=["frame_id", "boxes"])
    assert table.column("boxes").to_pylist() == [
        [{"label": "vehicle", "x": 4.0, "y": 6.0, "w": 20.0, "h": 12.5, "track_id": "3"},
         {"label": "pedestrian", "x": 30.0, "y": 2.0, "w": 8.0, "h": 30.0, "track_id": None}],
        None,  # the second frame has no box message: not annotated
    ]  # fmt: skip


def test_a_batch_staged_before_frames_had_boxes_still_writes_its_frames(store):
    """An upgrade mid-batch: the validation staged frames without the `boxes` column; write_frames moves
    them into place and summarizes them (no frame with boxes) instead of failing on the missing column."""
    settings = load_settings()
    _land(store, 2)
    plan = ingest.plan_batch(store, min_clips=2, max_clips=10)
    ingest.commit_batch(store, plan)
    ingest.validate_batch(store, plan.batch_id, settings)
    staged = [o.key for o in store.list("") if plan.batch_id in o.key and o.key.endswith(".parquet")]
    assert staged, "validation stages the frames"
    for key in staged:
        store.write_parquet(key, store.read_parquet(key).drop_columns(["boxes"]))
    summary = ingest.write_frames(store, plan.batch_id, settings)
    assert summary["frames"] == 6 and summary["with_boxes"] == 0 and summary["source"].startswith("staged")
