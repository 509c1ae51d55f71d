"""`ingest.LandingScan`: landing a page at a time from a position, once round, claims beside it."""

import pytest

from flywheel import ingest, layout
from tests.conftest import make_clip, put_raw

DAY = "landing/veh-1/2026-11-01/"


def _land(store, names: list[str]) -> list[str]:
    keys = [f"{DAY}{n}.mcap" for n in names]
    for key in keys:
        store.write_bytes(key, make_clip(key))  # the key in the clip: each one's bytes differ
    return keys


def test_a_scan_goes_round_from_its_position_past_claims_and_bad_names(store):
    keys = _land(store, [f"c{i}" for i in range(6)])
    store.write_bytes(layout.claim_key(keys[1]), b"{}")  # c1 is held by some batch
    store.write_bytes(DAY + "c4.mcap.part", b"partial")  # no clip
    put_raw(store, DAY + "c5 copy.mcap", b"x")  # no key
    scan = ingest.LandingScan(store, after=keys[2], page=2)
    assert [o.key for o in scan] == [keys[i] for i in (3, 4, 5, 0, 2)]
    assert scan.complete and scan.fresh == 5 and scan.waiting == 5
    assert [o.key for o in scan.bad] == [DAY + "c5 copy.mcap"]
    assert scan.after == keys[2]  # nothing taken: the next round starts where this one did


def test_planning_through_a_scan_takes_clips_in_its_order_and_moves_its_position(store):
    keys = _land(store, [f"c{i}" for i in range(5)])
    scan = ingest.LandingScan(store, after=keys[1], page=2)
    plan = ingest.plan_batch(store, min_clips=2, max_clips=2, scan=scan)
    assert [c["key"] for c in plan.clips] == keys[2:4]
    assert scan.taken == 2 and scan.after == keys[3]
    assert scan.waiting >= 0 and scan.fresh >= 2
    ingest.commit_batch(store, plan)
    nxt = ingest.LandingScan(store, after=scan.after, page=2)  # on from there, then round
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10, scan=nxt)
    assert [c["key"] for c in plan.clips] == [keys[4], keys[0], keys[1]]
    assert nxt.complete and nxt.waiting == 0


def test_below_the_threshold_a_scan_lists_the_whole_round_and_counts_it(store):
    _land(store, ["a", "b"])
    scan = ingest.LandingScan(store, after=DAY + "a.mcap")
    assert ingest.plan_batch(store, min_clips=3, max_clips=10, scan=scan) is None
    assert scan.complete and scan.waiting == 2 and scan.taken == 0


def test_a_scan_needs_a_landing_position(store):
    with pytest.raises(ValueError, match="'claims/x.mcap'"):
        ingest.LandingScan(store, after="claims/x.mcap")
