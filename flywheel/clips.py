"""MCAP clips: read and validate one clip (DESIGN.md §1), and write one (simulator, tests).

A clip that breaks the contract raises `ClipError` with a short machine-readable `reason`
(`truncated`, `not_mcap`, `no_camera`, ...) and a message for people; the caller
quarantines it and the batch goes on. Nothing in a clip decides how much memory reading it
takes: a chunk's declared size is checked before it is decompressed, and decompression stops
at that size.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import re
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from PIL import Image

from flywheel.layout import check_name
from flywheel.mcap_records import (
    MCAP_MAGIC,
    Channel,
    ClipError,
    Message,
    Schema,
    records,
)

FOXGLOVE_IMAGE = "foxglove.CompressedImage"
ROS2_IMAGE = "sensor_msgs/msg/CompressedImage"
GROUND_TRUTH = "flywheel.GroundTruth"
GROUND_TRUTH_TOPIC = "/ground_truth"
# Boxes (the detection task): one channel per camera, `/ground_truth/boxes/<camera>`, a message per annotated
# frame matched to that camera's frame by log_time; flywheel's own JSON schema, or Foxglove ImageAnnotations.
BOXES_PREFIX = "/ground_truth/boxes/"
GROUND_TRUTH_BOXES = "flywheel.GroundTruthBoxes"
FOXGLOVE_ANNOTATIONS = "foxglove.ImageAnnotations"
BOX_SCHEMAS = {(GROUND_TRUTH_BOXES, "json"), (FOXGLOVE_ANNOTATIONS, "json"), (FOXGLOVE_ANNOTATIONS, "protobuf")}
BOX_ENCODINGS = ("json", "foxglove", "foxglove-json")  # write_clip: flywheel JSON, ImageAnnotations protobuf or JSON
MAX_BOXES = 1000  # per frame: more is a bad clip, not a memory bill
LINE_LOOP = 2  # foxglove.PointsAnnotation.Type: a box is a closed loop of its four corners
CAMERA_PREFIX = "/camera/"
FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
ACCEPTED = {(FOXGLOVE_IMAGE, "json"), (FOXGLOVE_IMAGE, "protobuf"), (ROS2_IMAGE, "cdr")}

MAX_CLIP_BYTES = 256 * 2**20  # an uploaded clip larger than this is quarantined unread (ingest.max_clip_bytes)
# All of a clip's chunks together decompress to at most this many bytes per uploaded byte, beyond a
# 16 MiB allowance (ingest.max_expansion): a few KB of zstd can declare GBs over many small chunks.
MAX_EXPANSION = 64.0
EXPANSION_ALLOWANCE = 16 * 2**20
CAMERA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a camera's name: a store key part and a slice value

ROS2_COMPRESSED_IMAGE_MSGDEF = """std_msgs/Header header
string format
uint8[] data
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""


@dataclass(frozen=True)
class ClipMeta:
    clip_id: str
    vehicle_id: str = "unknown"
    trigger: str = "random"
    recorded_at: str = "1970-01-01T00:00:00+00:00"
    extra: dict[str, str] = field(default_factory=dict)  # any other key of the `clip` record


@dataclass(frozen=True)
class Box:
    """One object in a frame: its class and its box in pixels of that frame (x, y: the top-left corner)."""

    label: str
    x: float
    y: float
    w: float
    h: float
    track_id: str | None = None  # the same object across a clip's frames, where the producer knows it


@dataclass(frozen=True)
class Frame:
    camera: str
    index: int  # position in its camera's stream, by log_time
    timestamp_ns: int  # MCAP log_time
    image: bytes  # encoded as uploaded (or resized, if configured)
    format: str  # jpeg | png | webp
    height: int
    width: int
    ground_truth: str | None = None  # class name from /ground_truth, if any
    boxes: tuple[Box, ...] | None = None  # from /ground_truth/boxes/<camera>; None: not annotated, (): nothing there


@dataclass(frozen=True)
class Clip:
    meta: ClipMeta
    frames: list[Frame]


# ---------------------------------------------------------------- reading


def read_clip(
    data: bytes,
    *,
    classes: list[str],
    max_pixels: int = 4096 * 4096,
    max_chunk_bytes: int = 256 * 2**20,
    max_clip_bytes: int = MAX_CLIP_BYTES,
    max_expansion: float = MAX_EXPANSION,
    resize: int | None = None,
    decode_check: bool = True,
) -> Clip:
    """Parse and validate one MCAP clip held in memory; raise ClipError if it is bad, whatever is
    wrong with it: no malformed message escapes as another exception.

    `max_chunk_bytes` bounds one decompressed chunk (`chunk_too_large` above it); all chunks
    together decompress to at most `max_expansion` bytes per byte of the clip beyond a 16 MiB
    allowance (`too_large`), so memory grows with the upload, not with what it declares; a clip
    over `max_clip_bytes` is refused. Each image is checked as it arrives. `decode_check` decodes
    every image once to prove it is whole (a cheap reduced-size decode for JPEG); the header-level
    checks (format, size, pixel limit) always run.
    """
    if len(data) > max_clip_bytes:
        raise ClipError("too_large", f"the clip is {len(data)} bytes, over the limit of {max_clip_bytes} (ingest.max_clip_bytes)")
    try:
        return _read_clip(data, classes=classes, max_pixels=max_pixels, max_chunk_bytes=max_chunk_bytes,
                          budget=int(EXPANSION_ALLOWANCE + max_expansion * len(data)), resize=resize,
                          decode_check=decode_check)  # fmt: skip
    except (ClipError, MemoryError):  # out of memory is the worker's trouble, not a verdict on the clip
        raise
    except RecursionError as e:
        raise ClipError("undecodable_message", f"a message nests too deeply to read: {e}") from e
    except Exception as e:  # a decoder's own error (protobuf, CDR, JSON of the wrong shape, OpenCV): the clip's fault
        raise ClipError("undecodable_message", f"{type(e).__name__}: {e}") from e


def _read_clip(data: bytes, *, classes: list[str], max_pixels: int, max_chunk_bytes: int, budget: int,
               resize: int | None, decode_check: bool) -> Clip:  # fmt: skip
    if not data.startswith(MCAP_MAGIC):
        raise ClipError("not_mcap", "the file does not start with the MCAP magic bytes")
    if len(data) < 2 * len(MCAP_MAGIC) or not data.endswith(MCAP_MAGIC):
        raise ClipError("truncated", f"the file ends without the MCAP footer ({len(data)} bytes)")

    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    routes: dict[int, tuple] = {}  # channel id -> (camera name or None, image decoder), once its first message came
    meta_record: dict[str, str] | None = None
    images: dict[str, list[tuple[int, str, bytes, int, int]]] = defaultdict(list)
    truth: dict[int, str] = {}
    boxes: dict[tuple[str, int], tuple[Box, ...]] = {}  # (camera, log_time) -> the frame's boxes
    try:
        for record in records(data, max_chunk_bytes, budget):
            if type(record) is Message:  # most records: the hot path, one dict lookup per message
                try:
                    camera, decode = routes[record.channel_id]
                except KeyError:
                    camera, decode = routes.setdefault(record.channel_id, _route(record.channel_id, channels, schemas))
                if camera is not None:
                    fmt, img = decode(record.data)
                    fmt = _format(fmt, where=f"{camera} at {record.log_time}")
                    img, h, w = _check_image(img, fmt, max_pixels, decode_check, where=f"{camera} at {record.log_time}")
                    images[camera].append((record.log_time, fmt, img, h, w))  # checked as it arrives
                elif type(decode) is _BoxChannel:
                    where = (decode.camera, record.log_time)
                    if where in boxes:
                        raise ClipError("bad_boxes", f"two box messages on {BOXES_PREFIX}{decode.camera} at {record.log_time}")
                    boxes[where] = decode.read(record.data, classes)
                elif decode is not None:
                    truth[record.log_time] = decode(record.data, classes)
            elif type(record) is Schema:
                schemas[record.id] = record
            elif type(record) is Channel:
                channels[record.id] = record
            elif record.name == "clip":  # a Metadata
                meta_record = record.metadata
    except ClipError:
        raise
    except (ValueError, KeyError, IndexError, struct.error) as e:  # UnicodeDecodeError is a ValueError
        raise ClipError("truncated", f"the MCAP records cannot be read: {e}") from e

    meta = _clip_meta(meta_record)
    if not images:
        raise ClipError("no_camera", f"no message on a channel whose topic starts with {CAMERA_PREFIX}")
    frames = []
    for camera in sorted(images):
        for index, (log_time, fmt, img, h, w) in enumerate(sorted(images[camera], key=lambda m: m[0])):
            objects = boxes.pop((camera, log_time), None)
            if objects is not None:
                _check_boxes(objects, w, h, where=f"{camera} at {log_time}")
            if resize is not None and max(h, w) > resize:
                img, h2, w2 = _resize(img, fmt, resize)
                objects = None if objects is None else tuple(_scaled(b, w2 / w, h2 / h) for b in objects)
                h, w = h2, w2
            frames.append(Frame(camera, index, log_time, img, fmt, h, w, truth.get(log_time), objects))
    if boxes:  # boxes for a frame the clip does not have
        camera, log_time = min(boxes)
        raise ClipError("bad_boxes", f"boxes on {BOXES_PREFIX}{camera} at {log_time} match no frame of camera "
                                     f"{camera!r} (matched by log_time)")  # fmt: skip
    return Clip(meta, frames)


def _check_boxes(objects: tuple[Box, ...], width: int, height: int, where: str) -> None:
    """Every box lies inside its frame (to a thousandth of a pixel) with a positive width and height."""
    for b in objects:
        inside = b.x >= -1e-3 and b.y >= -1e-3 and b.x + b.w <= width + 1e-3 and b.y + b.h <= height + 1e-3
        if not inside:
            raise ClipError("bad_boxes", f"frame {where}: the {b.label} box x={b.x:g} y={b.y:g} w={b.w:g} h={b.h:g} "
                                         f"is not inside the {width}x{height} frame")  # fmt: skip


def _scaled(b: Box, sx: float, sy: float) -> Box:
    return Box(b.label, b.x * sx, b.y * sy, b.w * sx, b.h * sy, b.track_id)


def _clip_meta(record: dict[str, str] | None) -> ClipMeta:
    if record is None:
        raise ClipError("bad_clip_id", "no metadata record named 'clip'")
    clip_id = record.pop("clip_id", "")
    try:  # it becomes a path segment of frame ids and store keys: '.' and '..' are refused too
        check_name(clip_id, "clip_id")
    except ValueError as e:
        raise ClipError("bad_clip_id", str(e)) from None
    known = {k: record.pop(k) for k in ("vehicle_id", "trigger", "recorded_at") if record.get(k)}
    if "recorded_at" in known:
        try:
            datetime.fromisoformat(known["recorded_at"])
        except ValueError:
            known.pop("recorded_at")  # optional field: fall back to the default
    return ClipMeta(clip_id=clip_id, **known, extra=record)


def _route(channel_id: int, channels: dict[int, Channel], schemas: dict[int, Schema]) -> tuple:
    """What the messages of a channel become: (camera name, image decoder) for a camera,
    (None, ground-truth reader) for /ground_truth, (None, None) for any other topic."""
    ch = channels.get(channel_id)
    if ch is None:
        raise ClipError("truncated", f"message on unknown channel {channel_id}")
    if ch.topic.startswith(CAMERA_PREFIX):
        camera = ch.topic[len(CAMERA_PREFIX) :]
        if not CAMERA_NAME.fullmatch(camera):
            raise ClipError("bad_camera", f"camera topic {ch.topic!r}: a camera's name is 1-64 letters, digits, "
                                          "'_' or '-', starting with a letter or digit")  # fmt: skip
        return camera, _image_decoder(ch, schemas.get(ch.schema_id))
    if ch.topic == GROUND_TRUTH_TOPIC:
        return None, _ground_truth_label
    if ch.topic.startswith(BOXES_PREFIX):
        camera = ch.topic[len(BOXES_PREFIX) :]
        if not CAMERA_NAME.fullmatch(camera):
            raise ClipError("bad_boxes", f"box topic {ch.topic!r} does not end in a camera's name")
        schema = schemas.get(ch.schema_id)
        key = (schema.name if schema else "", ch.message_encoding)
        if key not in BOX_SCHEMAS:
            raise ClipError("unsupported_schema", f"box channel {ch.topic} has schema {key[0]!r} with encoding "
                                                  f"{key[1]!r}; accepted: {sorted(BOX_SCHEMAS)}")  # fmt: skip
        parse = _box_parser(key[0], key[1], schema.encoding, bytes(schema.data))
        return None, _BoxChannel(camera, parse)
    return None, None


@dataclass(frozen=True)
class _BoxChannel:
    """A camera's box channel: `read(message bytes, classes)` -> that frame's boxes, validated."""

    camera: str
    parse: object  # message bytes -> [(label, x, y, w, h, track_id)]

    def read(self, raw: bytes, classes: list[str]) -> tuple[Box, ...]:
        try:
            objects = self.parse(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ClipError("bad_boxes", f"a box message on {BOXES_PREFIX}{self.camera} is not valid: {e}") from e
        if len(objects) > MAX_BOXES:
            raise ClipError("bad_boxes", f"{len(objects)} boxes in one frame on {BOXES_PREFIX}{self.camera}, over {MAX_BOXES}")
        out = []
        for label, *numbers, track in objects:
            if label not in classes:
                raise ClipError("unknown_label", f"box label {label!r} on {BOXES_PREFIX}{self.camera} is not one of {classes}")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
                raise ClipError("bad_boxes", f"a {label} box on {BOXES_PREFIX}{self.camera} has x, y, w, h {numbers}: "
                                             "they must be finite numbers")  # fmt: skip
            x, y, w, h = (float(v) for v in numbers)
            if w <= 0 or h <= 0:
                raise ClipError("bad_boxes", f"a {label} box on {BOXES_PREFIX}{self.camera} has w={w:g}, h={h:g}: both must be > 0")
            out.append(Box(label, x, y, w, h, None if track in (None, "") else str(track)))
        return tuple(out)


@functools.lru_cache(maxsize=16)
def _box_parser(name: str, message_encoding: str, schema_encoding: str, schema_data: bytes):
    """Message bytes -> [(label, x, y, w, h, track_id)] for one box schema (DESIGN.md §1)."""
    if name == GROUND_TRUTH_BOXES:

        def flywheel_json(raw: bytes) -> list[tuple]:
            return [(o["label"], o["x"], o["y"], o["w"], o["h"], o.get("track_id")) for o in json.loads(raw)["objects"]]

        return flywheel_json
    if message_encoding == "json":
        return lambda raw: _annotation_boxes(json.loads(raw))
    from mcap.records import Schema
    from mcap_protobuf.decoder import DecoderFactory as ProtobufDecoders

    pb = ProtobufDecoders().decoder_for("protobuf", Schema(id=0, name=name, encoding=schema_encoding, data=schema_data))

    def foxglove_protobuf(raw: bytes) -> list[tuple]:
        m = pb(raw)
        points = [{"type": p.type, "points": [{"x": q.x, "y": q.y} for q in p.points]} for p in m.points]
        return _annotation_boxes({"points": points, "texts": [{"text": t.text} for t in m.texts]})

    return foxglove_protobuf


def _annotation_boxes(msg: Mapping) -> list[tuple]:
    """Foxglove ImageAnnotations as boxes: each LINE_LOOP points annotation of four axis-aligned corners is
    a box, named by the text annotation of the same rank (`<class>` or `<class>#<track_id>`); other
    annotations are drawing, not boxes."""
    loops = [p for p in msg.get("points", []) if p.get("type") in (LINE_LOOP, "LINE_LOOP")]
    texts = [t["text"] for t in msg.get("texts", [])]
    if len(texts) != len(loops):
        raise ValueError(f"{len(loops)} LINE_LOOP boxes but {len(texts)} texts to name them (one each, in order)")
    out = []
    for loop, text in zip(loops, texts, strict=True):
        corners = [(q["x"], q["y"]) for q in loop["points"]]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        if len(corners) != 4 or set(corners) != {(x, y) for x in (min(xs), max(xs)) for y in (min(ys), max(ys))}:
            raise ValueError(f"the {text!r} box is not four axis-aligned corners: {corners}")
        label, _, track = str(text).partition("#")
        out.append((label, min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys), track or None))
    return out


def _image_decoder(channel: Channel, schema: Schema | None):
    """A function from message bytes to (format, image bytes) for one camera channel."""
    name = schema.name if schema else ""
    key = (name, channel.message_encoding)
    if key not in ACCEPTED:
        raise ClipError(
            "unsupported_schema",
            f"camera channel {channel.topic} has schema {name!r} with encoding "
            f"{channel.message_encoding!r}; accepted: {sorted(ACCEPTED)}",
        )
    # Building a protobuf or CDR decoder parses the schema: once per schema, not once per clip.
    return _decoder_for(name, channel.message_encoding, schema.encoding if schema else "",
                        bytes(schema.data) if schema else b"")  # fmt: skip


@functools.lru_cache(maxsize=64)
def _decoder_for(name: str, message_encoding: str, schema_encoding: str, schema_data: bytes):
    key = (name, message_encoding)
    if key == (FOXGLOVE_IMAGE, "json"):

        def decode(raw: bytes):
            msg = json.loads(raw)
            return msg.get("format", ""), base64.b64decode(msg.get("data", ""), validate=True)

        return decode
    from mcap.records import Schema  # the decoders below take mcap's own record

    schema = Schema(id=0, name=name, encoding=schema_encoding, data=schema_data)
    if key == (FOXGLOVE_IMAGE, "protobuf"):
        from mcap_protobuf.decoder import DecoderFactory as ProtobufDecoders

        pb = ProtobufDecoders().decoder_for("protobuf", schema)
        return lambda raw: (lambda m: (m.format, m.data))(pb(raw))
    from mcap_ros2.decoder import DecoderFactory as Ros2Decoders

    cdr = Ros2Decoders().decoder_for("cdr", schema)
    return lambda raw: (lambda m: (m.format, bytes(m.data)))(cdr(raw))


def _ground_truth_label(raw: bytes, classes: list[str]) -> str:
    try:
        label = json.loads(raw)["label"]
    except (ValueError, KeyError, TypeError) as e:
        raise ClipError("bad_ground_truth", f"a /ground_truth message is not valid: {e}") from e
    if label not in classes:
        raise ClipError("unknown_label", f"ground-truth label {label!r} is not one of {classes}")
    return label


def _format(fmt, where: str) -> str:
    """A message's image format, canonical: jpeg, png or webp (JPG, jpg and Jpeg are jpeg)."""
    name = fmt.strip().lower() if isinstance(fmt, str) else ""
    if name not in FORMATS:
        raise ClipError("undecodable_image", f"frame {where}: format {fmt!r} is not jpeg, png or webp")
    return "jpeg" if name == "jpg" else name


def _check_image(img: bytes, fmt: str, max_pixels: int, decode_check: bool, where: str):
    try:
        with Image.open(io.BytesIO(img)) as im:
            if im.format != FORMATS[fmt]:
                raise ClipError(
                    "undecodable_image", f"frame {where}: says {fmt} but the bytes are {im.format}"
                )
            w, h = im.size
            if w * h > max_pixels:  # checked before any decode: no decompression bombs
                raise ClipError(
                    "image_too_large", f"frame {where}: {w}x{h} is over the limit of {max_pixels} pixels"
                )
            if decode_check:
                if im.format == "JPEG":
                    im.draft("L", (max(1, w // 8), max(1, h // 8)))  # DCT-scaled decode
                im.load()
    except ClipError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ClipError("undecodable_image", f"frame {where}: {e}") from e
    return img, h, w


def _resize(img: bytes, fmt: str, longest: int) -> tuple[bytes, int, int]:
    import cv2  # only here: a worker process that reads clips without resizing does not load OpenCV
    import numpy as np

    arr = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)
    h, w = arr.shape[:2]
    scale = longest / max(h, w)
    arr = cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode("." + ("jpg" if fmt in ("jpeg", "jpg") else fmt), arr)
    if not ok:
        raise ClipError("undecodable_image", f"cannot re-encode a resized {fmt} image")
    return buf.tobytes(), arr.shape[0], arr.shape[1]


# ---------------------------------------------------------------- writing


def write_clip(
    meta: dict[str, str],
    frames: list[tuple[str, int, str, bytes]],
    ground_truth: list[tuple[int, str]] = (),
    *,
    encoding: str = "protobuf",
    boxes: Sequence[tuple[str, int, Sequence[Mapping]]] = (),
    box_encoding: str = "json",
) -> bytes:
    """Encode one clip as MCAP bytes.

    `frames`: (camera, log_time_ns, format, image bytes); `ground_truth`: (log_time_ns, label);
    `encoding`: `json` or `protobuf` (foxglove.CompressedImage) or `cdr` (ROS 2).
    `boxes`: (camera, log_time_ns, objects) per annotated frame, each object a mapping with `label`,
    `x`, `y`, `w`, `h` (pixels, x/y the top-left corner) and optionally `track_id`; `box_encoding`:
    `json` (flywheel.GroundTruthBoxes), `foxglove` or `foxglove-json` (foxglove.ImageAnnotations).
    """
    if box_encoding not in BOX_ENCODINGS:
        raise ValueError(f"unknown box encoding {box_encoding!r}: use one of {BOX_ENCODINGS}")
    # imported here: reading clips (all a worker process does) needs no writer
    from mcap.writer import CompressionType, Writer

    out = io.BytesIO()
    writer = Writer(out, compression=CompressionType.ZSTD, enable_data_crcs=True)  # a reader can check the data section
    writer.start(profile="ros2" if encoding == "cdr" else "", library="flywheel")
    encode = _image_encoder(writer, encoding)
    cameras: dict[str, int] = {}
    for camera, log_time, fmt, img in frames:
        if camera not in cameras:
            cameras[camera] = writer.register_channel(
                topic=CAMERA_PREFIX + camera, message_encoding=encode.encoding, schema_id=encode.schema_id
            )
        data = encode(log_time, camera, fmt, img)
        writer.add_message(cameras[camera], log_time=log_time, publish_time=log_time, data=data)
    if ground_truth:
        gt_schema = writer.register_schema(
            GROUND_TRUTH, "jsonschema",
            json.dumps({"type": "object", "properties": {"timestamp": {"type": "object"}, "label": {"type": "string"}}}).encode(),
        )  # fmt: skip
        gt = writer.register_channel(GROUND_TRUTH_TOPIC, "json", gt_schema)
        for log_time, label in ground_truth:
            sec, nsec = divmod(log_time, 1_000_000_000)
            body = json.dumps({"timestamp": {"sec": sec, "nsec": nsec}, "label": label}).encode()
            writer.add_message(gt, log_time=log_time, publish_time=log_time, data=body)
    if boxes:
        _write_boxes(writer, boxes, box_encoding)
    writer.add_metadata("clip", {k: str(v) for k, v in meta.items()})
    writer.finish()
    return out.getvalue()


def _write_boxes(writer, boxes: Sequence[tuple[str, int, Sequence[Mapping]]], box_encoding: str) -> None:
    """One box channel per camera, one message per annotated frame (`write_clip`'s `boxes`)."""
    if box_encoding == "foxglove":
        from foxglove_schemas_protobuf.ImageAnnotations_pb2 import ImageAnnotations
        from google.protobuf.json_format import ParseDict
        from mcap_protobuf.schema import build_file_descriptor_set

        schema_id = writer.register_schema(FOXGLOVE_ANNOTATIONS, "protobuf",
                                           build_file_descriptor_set(ImageAnnotations).SerializeToString())  # fmt: skip
        encoding = "protobuf"

        def body(log_time, objects):
            return ParseDict(_annotations(objects), ImageAnnotations()).SerializeToString()
    else:
        name = GROUND_TRUTH_BOXES if box_encoding == "json" else FOXGLOVE_ANNOTATIONS
        schema_id = writer.register_schema(name, "jsonschema", json.dumps({"title": name, "type": "object"}).encode())
        encoding = "json"

        def body(log_time, objects):
            sec, nsec = divmod(log_time, 1_000_000_000)
            if box_encoding == "foxglove-json":
                return json.dumps(_annotations(objects) | {"timestamp": {"sec": sec, "nsec": nsec}}).encode()
            fields = ("label", "x", "y", "w", "h", "track_id")
            rows = [{k: o[k] for k in fields if o.get(k) is not None} for o in objects]
            return json.dumps({"timestamp": {"sec": sec, "nsec": nsec}, "objects": rows}).encode()

    channels: dict[str, int] = {}
    for camera, log_time, objects in boxes:
        if camera not in channels:
            channels[camera] = writer.register_channel(BOXES_PREFIX + camera, encoding, schema_id)
        writer.add_message(channels[camera], log_time=log_time, publish_time=log_time, data=body(log_time, objects))


def _annotations(objects: Sequence[Mapping]) -> dict:
    """Boxes as Foxglove ImageAnnotations (the dict form): a LINE_LOOP of four corners and a text per box."""
    points, texts = [], []
    for o in objects:
        x0, y0, x1, y1 = o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]
        corners = [{"x": x, "y": y} for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
        points.append({"type": LINE_LOOP, "points": corners, "thickness": 1})
        track = o.get("track_id")
        texts.append({"position": {"x": x0, "y": y0}, "text": o["label"] + (f"#{track}" if track not in (None, "") else "")})
    return {"points": points, "texts": texts}


def _image_encoder(writer, encoding: str):  # writer: mcap.writer.Writer
    if encoding == "json":
        schema_id = writer.register_schema(FOXGLOVE_IMAGE, "jsonschema", json.dumps(_FOXGLOVE_JSONSCHEMA).encode())

        def encode(t, camera, fmt, img):
            sec, nsec = divmod(t, 1_000_000_000)
            return json.dumps({
                "timestamp": {"sec": sec, "nsec": nsec}, "frame_id": camera,
                "data": base64.b64encode(img).decode(), "format": fmt,
            }).encode()  # fmt: skip
    elif encoding == "protobuf":
        from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
        from mcap_protobuf.schema import build_file_descriptor_set

        fds = build_file_descriptor_set(CompressedImage).SerializeToString()
        schema_id = writer.register_schema(FOXGLOVE_IMAGE, "protobuf", fds)

        def encode(t, camera, fmt, img):
            msg = CompressedImage(frame_id=camera, data=img, format=fmt)
            msg.timestamp.FromNanoseconds(t)
            return msg.SerializeToString()
    elif encoding == "cdr":
        from mcap_ros2._dynamic import serialize_dynamic

        schema_id = writer.register_schema(ROS2_IMAGE, "ros2msg", ROS2_COMPRESSED_IMAGE_MSGDEF.encode())
        ros2 = serialize_dynamic(ROS2_IMAGE, ROS2_COMPRESSED_IMAGE_MSGDEF)[ROS2_IMAGE]

        def encode(t, camera, fmt, img):
            sec, nsec = divmod(t, 1_000_000_000)
            header = {"stamp": {"sec": sec, "nanosec": nsec}, "frame_id": camera}
            return ros2({"header": header, "format": fmt, "data": img})
    else:
        raise ValueError(f"unknown clip encoding {encoding!r}: use json, protobuf or cdr")
    encode.encoding = {"json": "json", "protobuf": "protobuf", "cdr": "cdr"}[encoding]
    encode.schema_id = schema_id
    return encode


_FOXGLOVE_JSONSCHEMA = {
    "title": FOXGLOVE_IMAGE,
    "type": "object",
    "properties": {
        "timestamp": {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}},
        "frame_id": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string"},
    },
}
