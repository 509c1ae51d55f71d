import io
import zlib

import cv2
import numpy as np
import pytest
from mcap.writer import Writer

from flywheel.clips import ClipError, read_clip, write_clip
from flywheel.mcap_records import REASONS
from tests.conftest import CLASSES, chunk_clip, jpeg, make_clip


@pytest.mark.parametrize("encoding", ["json", "protobuf", "cdr"])
def test_every_encoding_reads_back(encoding):
    img = jpeg(7)
    clip = read_clip(make_clip("c-7", n=4, encoding=encoding, image=img), classes=CLASSES)
    assert clip.meta.clip_id == "c-7"
    assert clip.meta.vehicle_id == "veh-1" and clip.meta.trigger == "random"
    assert clip.meta.extra == {"condition": "day"}
    assert [f.index for f in clip.frames] == [0, 1, 2, 3]
    assert all(f.image == img for f in clip.frames)  # kept as uploaded, byte for byte
    assert {(f.height, f.width, f.format, f.ground_truth) for f in clip.frames} == {(24, 32, "jpeg", "vehicle")}
    assert clip.frames[1].timestamp_ns - clip.frames[0].timestamp_ns == 100_000_000


def test_png_and_webp_and_several_cameras():
    png = cv2.imencode(".png", np.zeros((10, 12, 3), np.uint8))[1].tobytes()
    clip = read_clip(make_clip(n=2, image=png, fmt="png", cameras=("front", "left")), classes=CLASSES)
    assert sorted({f.camera for f in clip.frames}) == ["front", "left"]
    assert {(f.height, f.width) for f in clip.frames} == {(10, 12)}
    webp = cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert read_clip(make_clip(n=1, image=webp, fmt="webp"), classes=CLASSES).frames[0].format == "webp"


def test_optional_fields_default_and_no_ground_truth():
    data = make_clip(label=None, meta={"vehicle_id": None, "trigger": None, "recorded_at": "not a date"})
    clip = read_clip(data, classes=CLASSES)
    assert clip.meta.vehicle_id == "unknown" and clip.meta.trigger == "random"
    assert clip.meta.recorded_at.startswith("1970")
    assert all(f.ground_truth is None for f in clip.frames)


def test_resize_is_applied_only_when_configured():
    big = cv2.imencode(".jpg", np.full((64, 128, 3), 90, np.uint8))[1].tobytes()
    clip = read_clip(make_clip(n=1, image=big), classes=CLASSES, resize=32)
    assert (clip.frames[0].height, clip.frames[0].width) == (16, 32)
    assert cv2.imdecode(np.frombuffer(clip.frames[0].image, np.uint8), 1).shape == (16, 32, 3)


def _no_camera() -> bytes:
    return write_clip({"clip_id": "x"}, [], [(1, "vehicle")])


def _truncated() -> bytes:
    data = make_clip(n=6)
    return data[: len(data) // 2]


def _zstd(data: bytes, *, content_size: bool = True) -> bytes:
    import zstandard

    if content_size:
        return zstandard.ZstdCompressor().compress(data)
    z = zstandard.ZstdCompressor().compressobj()  # a streamed frame: no content size in its header
    return z.compress(data) + z.flush()


def _corrupt_middle() -> bytes:
    data = bytearray(make_clip(n=6))
    data[60:200] = b"\xff" * 140  # inside the records, footer intact
    return bytes(data)


BAD = {
    "not_mcap": lambda: b"PK\x03\x04 this is a zip, not a clip",
    "truncated": _truncated,
    "truncated-middle": _corrupt_middle,
    "no_camera": _no_camera,
    "bad_clip_id": lambda: make_clip("bad id with spaces"),
    "bad_clip_id-missing": lambda: make_clip(meta={"clip_id": None}),
    "bad_clip_id-dot": lambda: make_clip("."),
    "bad_clip_id-dotdot": lambda: make_clip(".."),
    "bad_clip_id-newline": lambda: make_clip("c1\n"),
    # 100 bytes that declare a TiB: refused before anything is decompressed
    "chunk_too_large": lambda: chunk_clip(_zstd(bytes(100)), uncompressed_size=2**40),
    # declares 1000 bytes, holds 1 MiB: decompression stops at the declared size
    "truncated-chunk-lies": lambda: chunk_clip(
        _zstd(bytes(2**20), content_size=False), uncompressed_size=1000
    ),
    "truncated-lz4-chunk-lies": lambda: chunk_clip(
        _lz4(bytes(2**20)), uncompressed_size=1000, compression="lz4"
    ),
    "unsupported_schema": lambda: _one_message_clip("foxglove.RawImage", "/camera/front", b"{}"),
    "undecodable_image": lambda: make_clip(image=jpeg()[:200]),
    "undecodable_image-garbage": lambda: make_clip(image=b"\xff\xd8 not really a jpeg"),
    "undecodable_image-format-lies": lambda: make_clip(image=jpeg(), fmt="png"),
    "image_too_large": lambda: make_clip(image=jpeg(h=64, w=64)),
    "unknown_label": lambda: make_clip(label="unicorn"),
    "bad_ground_truth": lambda: _one_message_clip("flywheel.GroundTruth", "/ground_truth", b"[1, 2]"),
    # hostile clips: many small chunks that together declare far more than the upload could hold
    "too_large": lambda: _many_chunks(24, 8 * 2**20),
    "bad_camera": lambda: make_clip(cameras=("../../x",)),
    "bad_camera-empty": lambda: make_clip(cameras=("",)),
    "bad_camera-dot": lambda: make_clip(cameras=(".hidden",)),
    "undecodable_message": lambda: _one_message_clip("foxglove.CompressedImage", "/camera/front", b"[1, 2]"),
    "undecodable_message-data-type": lambda: _one_message_clip(
        "foxglove.CompressedImage", "/camera/front", b'{"format": "jpeg", "data": 5}'),
    "undecodable_message-nested": lambda: _one_message_clip(
        "foxglove.CompressedImage", "/camera/front", b"[" * 100_000 + b"]" * 100_000),
    "undecodable_message-protobuf": lambda: _garbled_protobuf(),
    # boxes (the detection task): each names the frame and the box
    "bad_boxes-outside": lambda: _boxed([{"label": "vehicle", "x": 40, "y": 2, "w": 10, "h": 5}]),  # 48 px wide
    "bad_boxes-negative": lambda: _boxed([{"label": "vehicle", "x": -2, "y": 2, "w": 10, "h": 5}]),
    "bad_boxes-empty": lambda: _boxed([{"label": "vehicle", "x": 2, "y": 2, "w": 0, "h": 5}]),
    "bad_boxes-nan": lambda: _boxed([{"label": "vehicle", "x": float("nan"), "y": 2, "w": 3, "h": 5}]),
    "bad_boxes-string": lambda: _boxed([{"label": "vehicle", "x": "2", "y": 2, "w": 3, "h": 5}]),
    "bad_boxes-no-frame": lambda: _boxed([], log_time=999),
    "bad_boxes-no-camera": lambda: _boxed([], camera="rear"),
    "bad_boxes-not-json": lambda: _one_message_clip("flywheel.GroundTruthBoxes", "/ground_truth/boxes/front", b"[1]"),
    "bad_boxes-unnamed": lambda: _one_message_clip("foxglove.ImageAnnotations", "/ground_truth/boxes/front",
                                                   b'{"points": [{"type": 2, "points": [{"x": 0, "y": 0}]}]}'),
    "bad_boxes-not-a-box": lambda: _one_message_clip(
        "foxglove.ImageAnnotations", "/ground_truth/boxes/front",
        b'{"points": [{"type": 2, "points": [{"x": 0, "y": 0}, {"x": 3, "y": 1}, {"x": 3, "y": 4}, {"x": 0, "y": 4}]}],'
        b' "texts": [{"text": "vehicle"}]}'),
    "bad_boxes-too-many": lambda: _boxed([{"label": "vehicle", "x": 1, "y": 1, "w": 1, "h": 1}] * 1001),
    "unknown_label-box": lambda: _boxed([{"label": "unicorn", "x": 2, "y": 2, "w": 3, "h": 5}]),
    "unsupported_schema-boxes": lambda: _one_message_clip("foxglove.SceneUpdate", "/ground_truth/boxes/front", b"{}"),
}  # fmt: skip


def _boxed(objects: list[dict], *, log_time: int = 0, camera: str = "front", encoding: str = "json") -> bytes:
    """A two-frame clip (48x36 frames at log times 0 and 1) with `objects` as the boxes of `camera` at `log_time`."""
    frames = [("front", t, "jpeg", jpeg(h=36, w=48)) for t in (0, 1)]
    return write_clip({"clip_id": "boxed"}, frames, boxes=[(camera, log_time, objects)], box_encoding=encoding)

# Reasons the batch's validation gives before any parsing (tests/ingest/test_ingest.py): not read_clip's.
INGEST_ONLY = {"changed_since_planned", "duplicate_clip_id"}


def _many_chunks(count: int, size: int) -> bytes:
    """`count` zstd chunks of `size` zero bytes each, a few KB in all (a many-chunk bomb)."""
    from mcap.data_stream import RecordBuilder
    from mcap.records import Chunk, DataEnd, Footer, Header, Metadata

    # one record of an opcode readers skip (0x80, a user opcode), `size` bytes in all
    content = b"\x80" + (size - 9).to_bytes(8, "little") + bytes(size - 9)
    data, crc = _zstd(content), zlib.crc32(content)
    out = RecordBuilder()
    out.write(b"\x89MCAP0\r\n")
    Header(profile="", library="test").write(out)
    for _ in range(count):
        Chunk(compression="zstd", data=data, message_start_time=0, message_end_time=0, uncompressed_crc=crc,
              uncompressed_size=size).write(out)  # fmt: skip
    Metadata(name="clip", metadata={"clip_id": "bomb"}).write(out)
    DataEnd(data_section_crc=0).write(out)
    Footer(summary_start=0, summary_offset_start=0, summary_crc=0).write(out)
    out.write(b"\x89MCAP0\r\n")
    return out.end()


def _garbled_protobuf() -> bytes:
    """A clip on the protobuf camera schema whose message is not protobuf."""
    from mcap.reader import make_reader

    schema = next(s for s in make_reader(io.BytesIO(make_clip(n=1, encoding="protobuf"))).get_summary().schemas.values()
                  if s.name == "foxglove.CompressedImage")  # fmt: skip
    out = io.BytesIO()
    w = Writer(out)
    w.start()
    cid = w.register_channel("/camera/front", "protobuf", w.register_schema(schema.name, schema.encoding, schema.data))
    w.add_message(cid, log_time=1, publish_time=1, data=b"\xff\xff\xff\xff not protobuf")
    w.add_metadata("clip", {"clip_id": "garbled"})
    w.finish()
    return out.getvalue()


def _lz4(data: bytes) -> bytes:
    import lz4.frame

    return lz4.frame.compress(data)


def _one_message_clip(schema: str, topic: str, data: bytes) -> bytes:
    """A clip with a single JSON message on `topic` (schema `schema`) and a valid clip record."""
    out = io.BytesIO()
    w = Writer(out)
    w.start()
    cid = w.register_channel(topic, "json", w.register_schema(schema, "jsonschema", b"{}"))
    w.add_message(cid, log_time=1, publish_time=1, data=data)
    w.add_metadata("clip", {"clip_id": "one"})
    w.finish()
    return out.getvalue()


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_quarantine_reason(case):
    with pytest.raises(ClipError) as err:
        read_clip(BAD[case](), classes=CLASSES, max_pixels=48 * 48)
    assert err.value.reason == case.split("-")[0]
    assert err.value.detail  # a person can read why


def test_every_reason_has_a_case():
    assert {c.split("-")[0] for c in BAD} | INGEST_ONLY == set(REASONS)


def test_a_many_chunk_bomb_is_refused_in_bounded_memory():
    """24 chunks of 8 MiB declared in a few KB: refused before the third is decompressed."""
    import tracemalloc

    bomb = _many_chunks(24, 8 * 2**20)
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    with pytest.raises(ClipError, match="too_large: the chunks of a .* clip declare more than"):
        read_clip(bomb, classes=CLASSES)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 * 2**20  # two chunks at most (16 MiB) and their copies, not 192 MiB


def test_a_clip_over_the_size_limit_is_refused_unparsed():
    data = make_clip(n=2)
    with pytest.raises(ClipError, match=f"too_large: the clip is {len(data)} bytes, over the limit of 100"):
        read_clip(data, classes=CLASSES, max_clip_bytes=100)


@pytest.mark.parametrize("fmt", ["JPG", "jpg", "Jpeg", " jpeg "])
def test_image_formats_are_canonical(fmt):
    assert {f.format for f in read_clip(make_clip(n=2, fmt=fmt), classes=CLASSES).frames} == {"jpeg"}


def test_the_chunk_limit_is_a_setting():
    data = make_clip(n=4)
    assert len(read_clip(data, classes=CLASSES, max_chunk_bytes=2**20).frames) == 4
    with pytest.raises(ClipError, match="over the limit of 100 bytes") as err:
        read_clip(data, classes=CLASSES, max_chunk_bytes=100)
    assert err.value.reason == "chunk_too_large"


def test_a_changed_byte_outside_the_chunks_fails_the_data_section_crc():
    """The clip's metadata record sits outside any chunk: only the data section's CRC (which
    write_clip writes) sees that it changed."""
    good = make_clip("clip-1")
    assert read_clip(good, classes=CLASSES).meta.clip_id == "clip-1"
    assert good.count(b"clip-1") == 1
    with pytest.raises(ClipError) as e:
        read_clip(good.replace(b"clip-1", b"clip-2"), classes=CLASSES)
    assert e.value.reason == "truncated" and "the data section fails its CRC check" in e.value.detail


def _records(*records: tuple[int, bytes]) -> bytes:
    """A chunk's uncompressed content: (opcode, content) records."""
    return b"".join(bytes([op]) + len(body).to_bytes(8, "little") + body for op, body in records)


_MESSAGE_HEAD = (1).to_bytes(2, "little") + bytes(4) + (5).to_bytes(8, "little") * 2  # channel 1, log time 5


@pytest.mark.parametrize(
    ("content", "crc", "detail"),
    [
        (_records((0x05, _MESSAGE_HEAD + b"img"))[:-1], None, "past the chunk's end"),
        (_records((0x05, b"short")), None, "shorter than its header"),
        (b"\x05\x01\x00", None, "cannot be read"),  # 3 of a record header's 9 bytes
        (_records((0x05, _MESSAGE_HEAD + b"img")), 12345, "fails its CRC check"),
    ],
    ids=["record-past-the-end", "message-shorter-than-its-header", "cut-record-header", "wrong-crc"],
)
def test_a_chunk_whose_records_do_not_add_up_is_truncated(content, crc, detail):
    """The records of a chunk are cut out by flywheel itself (one struct call per message): each way
    its bytes can disagree with their own lengths or CRC is a `truncated` clip, never a crash."""
    import zlib

    data = chunk_clip(content, uncompressed_size=len(content), crc=zlib.crc32(content) if crc is None else crc,
                      compression="")  # fmt: skip
    with pytest.raises(ClipError, match=detail) as e:
        read_clip(data, classes=CLASSES)
    assert e.value.reason == "truncated"


def _rewritten(data: bytes, change) -> bytes:
    """`data` with its top-level records (chunks kept whole) passed through `change(records)`, the
    magic around them as before."""
    from mcap.data_stream import RecordBuilder
    from mcap.stream_reader import StreamReader

    records = change(list(StreamReader(io.BytesIO(data), emit_chunks=True).records))
    out = RecordBuilder()
    out.write(b"\x89MCAP0\r\n")
    for r in records:
        r.write(out)
    out.write(b"\x89MCAP0\r\n")
    return out.end()


def test_a_clip_without_a_data_end_record_reads_up_to_its_footer():
    """Data End is where the data section's CRC sits; a writer may leave it out, and the clip's
    records are then read up to the Footer."""
    from mcap.records import DataEnd

    data = _rewritten(make_clip("c-1", n=2), lambda rs: [r for r in rs if not isinstance(r, DataEnd)])
    clip = read_clip(data, classes=CLASSES)
    assert clip.meta.clip_id == "c-1" and len(clip.frames) == 2


_MAGIC = b"\x89MCAP0\r\n"


def _string(s: bytes) -> bytes:
    return len(s).to_bytes(4, "little") + s


@pytest.mark.parametrize(
    ("records", "detail"),
    [
        (_records((0x0C, _string(b"clip") + bytes(4)))[:-2], "past the file's end"),
        (_records((0x03, (1).to_bytes(2, "little") + (99).to_bytes(4, "little") + b"name")), "past the record's end"),
        (_records((0x0C, _string(b"clip") + (8).to_bytes(4, "little") + _string(b"clip_id"))), "past the record's end"),
        (_records((0x03, b"\x01")), "runs past the record's end"),
        (_records((0x0C, _string(b"\xff\xfe") + bytes(4))), "cannot be read"),  # a name that is no UTF-8
        (_records((0x0C, _string(b"clip") + bytes(4))), "without a Data End or Footer"),
        (_records((0x06, bytes(10))), "shorter than its header"),
        (_records((0x0F, b"\x01\x02")), "runs past the record's end"),  # a Data End cut inside its CRC
    ],
    ids=["record-past-the-file-end", "string-past-the-record", "map-past-the-map", "cut-number", "not-utf8",
         "no-data-end", "cut-chunk-header", "cut-data-end"],
)  # fmt: skip
def test_top_level_records_that_do_not_add_up_are_truncated(records, detail):
    """flywheel reads a clip's top-level records itself (one struct call per field group); every way
    their lengths can point past their record, or past the file, is a `truncated` clip."""
    with pytest.raises(ClipError, match=detail) as e:
        read_clip(_MAGIC + records + _MAGIC, classes=CLASSES)
    assert e.value.reason == "truncated"


@pytest.mark.parametrize("encoding", ["json", "foxglove", "foxglove-json"])
def test_boxes_read_back_in_every_encoding_and_follow_a_resize(encoding):
    """Boxes per frame by log_time: a frame without a box message has none (None), an empty message means
    nothing there (()); a resized frame's boxes are scaled with it."""
    objects = [{"label": "vehicle", "x": 1.5, "y": 2, "w": 10, "h": 5, "track_id": "7"},
               {"label": "pedestrian", "x": 30, "y": 10, "w": 18, "h": 26}]  # fmt: skip
    frames = [("front", t, "jpeg", jpeg(h=36, w=48)) for t in (0, 1, 2)]
    data = write_clip({"clip_id": "boxed"}, frames, boxes=[("front", 0, objects), ("front", 1, [])], box_encoding=encoding)
    got = [f.boxes for f in read_clip(data, classes=CLASSES).frames]
    assert got[1:] == [(), None]
    assert [vars(b) for b in got[0]] == [{**objects[0]}, {**objects[1], "x": 30.0, "y": 10.0, "track_id": None}]
    half = read_clip(data, classes=CLASSES, resize=24).frames[0]
    assert (half.width, half.height) == (24, 18)
    assert [(b.x, b.y, b.w, b.h) for b in half.boxes] == [(0.75, 1.0, 5.0, 2.5), (15.0, 5.0, 9.0, 13.0)]


def test_write_clip_refuses_an_unknown_box_encoding():
    with pytest.raises(ValueError, match="box encoding 'xml'"):
        write_clip({"clip_id": "c"}, [("front", 0, "jpeg", jpeg())], boxes=[("front", 0, [])], box_encoding="xml")
