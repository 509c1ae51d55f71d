import pyarrow as pa
import pytest

from flywheel.store import check_key, open_store
from tests.conftest import put_raw


def test_bytes_round_trip_and_listing(store):
    store.write_bytes("landing/v1/2026-01-01/a.mcap", b"one")
    store.write_bytes("landing/v1/2026-01-01/b.mcap", b"two")
    store.write_bytes("batches/x.json", b"{}")
    assert store.read_bytes("landing/v1/2026-01-01/a.mcap") == b"one"
    assert [o.key for o in store.list("landing/")] == [
        "landing/v1/2026-01-01/a.mcap",
        "landing/v1/2026-01-01/b.mcap",
    ]
    assert [o.size for o in store.list("landing/")] == [3, 3]
    assert store.exists("batches/x.json") and not store.exists("batches/y.json")


def test_overwrite_is_whole_and_leaves_no_temporaries(store):
    store.write_bytes("a/b.json", b"old")
    store.write_bytes("a/b.json", b"new value")
    assert store.read_bytes("a/b.json") == b"new value"
    assert [o.key for o in store.list("a/")] == ["a/b.json"]


def test_move_and_delete(store):
    store.write_bytes("landing/x.mcap", b"data")
    store.move("landing/x.mcap", "quarantine/x.mcap")
    assert not store.exists("landing/x.mcap")
    assert store.read_bytes("quarantine/x.mcap") == b"data"
    store.delete("quarantine/x.mcap")
    assert store.list("quarantine/") == []


def test_missing_object_names_it(store):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        store.read_bytes("nope.json")


def test_json_round_trip_and_bad_json(store):
    store.write_json("m/manifest.json", {"a": [1, 2]})
    assert store.read_json("m/manifest.json") == {"a": [1, 2]}
    store.write_bytes("m/bad.json", b"{not json")
    with pytest.raises(ValueError, match="bad.json"):
        store.read_json("m/bad.json")


def test_parquet_round_trip(store):
    table = pa.table({"frame_id": ["a", "b"], "image": [b"\x00\x01", b"\x02"]})
    n = store.write_parquet("frames/batch=1/part-0.parquet", table)
    assert n > 0
    assert store.read_parquet("frames/batch=1/part-0.parquet").equals(table)
    assert store.parquet_file("frames/batch=1/part-0.parquet").metadata.num_rows == 2
    assert [o.key for o in store.list("frames/")] == ["frames/batch=1/part-0.parquet"]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "sp ace", "q?x"])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="invalid store key"):
        check_key(key)


def test_bad_roots_are_refused():
    with pytest.raises(ValueError, match="unsupported store root"):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError, match="invalid S3 root"):
        open_store("s3://")


def test_create_is_exclusive_and_whole(store):
    from concurrent.futures import ThreadPoolExecutor

    assert store.create("claims/c1", b"first") is True
    assert store.create("claims/c1", b"second") is False
    assert store.read_bytes("claims/c1") == b"first"
    with ThreadPoolExecutor(8) as pool:  # racing creators: exactly one wins
        won = list(pool.map(lambda i: store.create("claims/race", f"w{i}".encode()), range(8)))
    assert won.count(True) == 1 and store.read_bytes("claims/race") == f"w{won.index(True)}".encode()
    assert [o.key for o in store.list("claims/")] == ["claims/c1", "claims/race"]  # no temporaries left


def test_listing_is_regular_files_inside_the_root(tmp_path):
    """Dangling links, FIFOs and links that lead out of the root are not objects: not listed."""
    import os

    store = open_store(str(tmp_path / "store"))
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.mcap").write_bytes(b"not yours")
    (outside / "dir" / "x.mcap").write_bytes(b"not yours")
    store.write_bytes("landing/v/d/a.mcap", b"a")
    store.write_bytes("other/b.mcap", b"b")
    day = store.path / "landing/v/d"
    (day / "dead.mcap").symlink_to(tmp_path / "nowhere.mcap")
    os.mkfifo(day / "pipe.mcap")
    (day / "out.mcap").symlink_to(outside / "secret.mcap")
    (day / "in.mcap").symlink_to(store.path / "other/b.mcap")
    (store.path / "landing/linked").symlink_to(outside / "dir", target_is_directory=True)
    assert [o.key for o in store.list("landing/")] == ["landing/v/d/a.mcap", "landing/v/d/in.mcap"]
    assert store.read_bytes("landing/v/d/in.mcap") == b"b"
    (store.path / "elsewhere").symlink_to(outside, target_is_directory=True)
    assert store.list("elsewhere/") == []


def test_bad_key_names_are_listed_flagged_and_can_be_moved(store):
    store.write_bytes("landing/v/d/good.mcap", b"good")
    put_raw(store, "landing/v/d/my clip.mcap", b"spaced")
    listing = store.list("landing/")
    assert [(o.key, o.bad_key) for o in listing] == [
        ("landing/v/d/good.mcap", False),
        ("landing/v/d/my clip.mcap", True),
    ]
    store.move_bad_key("landing/v/d/my clip.mcap", "quarantine/v/d/my_clip.mcap")
    assert [o.key for o in store.list("landing/")] == ["landing/v/d/good.mcap"]
    assert store.read_bytes("quarantine/v/d/my_clip.mcap") == b"spaced"
    with pytest.raises(ValueError, match="invalid store key"):
        store.move_bad_key("landing/v/d/good.mcap", "quarantine/a b.mcap")
    with pytest.raises(ValueError, match="'landing/../x.mcap'"):
        store.move_bad_key("landing/../x.mcap", "quarantine/x.mcap")
