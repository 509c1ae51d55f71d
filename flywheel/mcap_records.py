"""MCAP's records, read within bounds: the part of reading a clip that walks the file's bytes.

`records` yields the messages (also those inside chunks), schemas, channels and metadata of an
MCAP file's data section and skips every other record unparsed. Nothing in a file decides how
much memory reading it takes: a chunk's declared size is checked before it is decompressed,
decompression stops at that size, and all chunks together stay within a budget. A file that
breaks the format raises `ClipError` (flywheel/clips.py quarantines the clip with its reason).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import NamedTuple

import lz4.frame
import zstandard

MCAP_MAGIC = b"\x89MCAP0\r\n"

# Quarantine reasons, each with a test.
REASONS = (
    "not_mcap",
    "truncated",
    "chunk_too_large",
    "no_camera",
    "bad_clip_id",
    "unsupported_schema",
    "undecodable_image",
    "image_too_large",
    "unknown_label",
    "bad_ground_truth",
    "bad_boxes",
    "too_large",
    "bad_camera",
    "undecodable_message",
    "changed_since_planned",
    "duplicate_clip_id",
)


class ClipError(ValueError):
    """A clip that breaks the contract. `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Message(NamedTuple):
    """A message record, as much of it as reading a clip uses."""

    channel_id: int
    log_time: int
    data: bytes


class Schema(NamedTuple):
    id: int
    name: str
    encoding: str
    data: bytes


class Channel(NamedTuple):
    id: int
    schema_id: int
    topic: str
    message_encoding: str


class Metadata(NamedTuple):
    name: str
    metadata: dict[str, str]


# MCAP opcodes (https://mcap.dev/spec) of the records a clip's reader looks at
_SCHEMA, _CHANNEL, _MESSAGE, _CHUNK, _METADATA, _DATA_END, _FOOTER = (
    0x03,
    0x04,
    0x05,
    0x06,
    0x0C,
    0x0F,
    0x02,
)
_RECORD_HEAD = struct.Struct("<BQ")  # opcode, content length
_MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
_CHUNK_HEAD = struct.Struct("<QQQI")  # message start and end time, uncompressed size and CRC
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


def records(data: bytes, max_chunk_bytes: int, budget: int):
    """The records of an MCAP file's data section that a clip is made of: messages (`Message`,
    also those inside chunks), schemas, channels and metadata; every other record is skipped
    unparsed (message indexes, attachments, statistics). Each chunk's declared size is checked
    before it is decompressed and its CRC after; the data section's CRC at its end. The summary
    section after it only indexes what the data section holds, so it is not read.

    Records are cut out with one struct call per field group (mcap's stream reader reads every
    field, index entries included, one stream call at a time, and its CRC a read at a time: about
    twice as slow on the demo's clips)."""
    left = budget  # bytes the chunks may still decompress to, all together
    for opcode, start, pos in _walk(data, len(MCAP_MAGIC), len(data) - len(MCAP_MAGIC), "the file"):
        if opcode == _CHUNK:
            if (
                start + _CHUNK_HEAD.size <= pos
                and (size := _CHUNK_HEAD.unpack_from(data, start)[2]) <= max_chunk_bytes
            ):
                left -= size  # declared, checked before decompressing (a larger one: chunk_too_large below)
                if left < 0:
                    raise ClipError(
                        "too_large",
                        f"the chunks of a {len(data)}-byte clip declare more than {budget} "
                        "bytes uncompressed (ingest.max_expansion)",
                    )
            yield from _chunk_records(data, start, pos, max_chunk_bytes)
        elif opcode == _DATA_END:
            crc = _Fields(data, start, pos).number(_U32)
            if crc and crc != (actual := zlib.crc32(memoryview(data)[: start - 9])):
                raise ClipError(
                    "truncated",
                    f"the data section fails its CRC check (expected {crc:#010x}, got {actual:#010x})",
                )
            return
        elif opcode == _FOOTER:  # no Data End record: the data section ends at the summary, if any
            return
        elif (record := _record(opcode, data, start, pos)) is not None:
            yield record
    raise ClipError("truncated", "the records end without a Data End or Footer record")


def _walk(buf: bytes, pos: int, end: int, where: str):
    """(opcode, start, end) of each record in `buf[pos:end]`, its content `buf[start:end]`."""
    head = _RECORD_HEAD.unpack_from
    while pos < end:
        opcode, length = head(buf, pos)
        start, pos = pos + 9, pos + 9 + length
        if pos > end:
            raise ClipError(
                "truncated",
                f"a record (opcode {opcode:#04x}) declares {length} bytes, past {where}'s end",
            )
        yield opcode, start, pos


def _record(opcode: int, buf: bytes, start: int, end: int):
    """The message, schema, channel or metadata record in `buf[start:end]`; None for other opcodes."""
    if opcode == _MESSAGE:
        if end - start < 22:
            raise ClipError(
                "truncated", f"a message record of {end - start} bytes is shorter than its header"
            )
        channel_id, _, log_time, _ = _MESSAGE_HEAD.unpack_from(buf, start)
        return Message(channel_id, log_time, buf[start + 22 : end])
    if opcode == _SCHEMA:
        fields = _Fields(buf, start, end)
        return Schema(fields.number(_U16), fields.text(), fields.text(), fields.blob())
    if opcode == _CHANNEL:  # its metadata map is not used
        fields = _Fields(buf, start, end)
        return Channel(fields.number(_U16), fields.number(_U16), fields.text(), fields.text())
    if opcode == _METADATA:
        fields = _Fields(buf, start, end)
        return Metadata(fields.text(), fields.pairs())
    return None


class _Fields:
    """Reads the fields of one record in order, never past its end (a length that points past it
    is a `truncated` clip)."""

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end

    def number(self, fmt: struct.Struct) -> int:
        if self.pos + fmt.size > self.end:
            raise ClipError("truncated", "a record's field runs past the record's end")
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def blob(self, length: struct.Struct = _U32) -> bytes:
        """A byte string prefixed by its `length`."""
        n = self.number(length)
        if self.pos + n > self.end:
            raise ClipError(
                "truncated", f"a record's field declares {n} bytes, past the record's end"
            )
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def text(self) -> str:
        return self.blob().decode()

    def pairs(self) -> dict[str, str]:
        """A map of strings: its byte length, then key and value strings."""
        body = self.blob()
        inner, out = _Fields(body, 0, len(body)), {}
        while inner.pos < inner.end:
            key = inner.text()
            out[key] = inner.text()
        return out


def _chunk_records(buf: bytes, start: int, end: int, max_chunk_bytes: int):
    """The records of the chunk record in `buf[start:end]`, decompressed and its CRC checked.
    Its declared size is checked first: nothing in a clip decides how much memory reading it takes."""
    if start + _CHUNK_HEAD.size > end:
        raise ClipError("truncated", "a chunk record is shorter than its header")
    _, _, size, crc = _CHUNK_HEAD.unpack_from(buf, start)
    if size > max_chunk_bytes:
        raise ClipError(
            "chunk_too_large",
            f"a chunk declares {size} bytes uncompressed, over the limit of {max_chunk_bytes} bytes "
            "(ingest.max_chunk_bytes)",
        )
    fields = _Fields(buf, start + _CHUNK_HEAD.size, end)
    compression = fields.text()
    raw = _decompress(compression, fields.blob(_U64), size)
    if crc and zlib.crc32(raw) != crc:
        raise ClipError("truncated", f"a chunk fails its CRC check (expected {crc:#010x})")
    for opcode, start, pos in _walk(raw, 0, len(raw), "the chunk"):
        if opcode == _MESSAGE:  # most records: inline, one struct call each
            if pos - start < 22:
                raise ClipError(
                    "truncated",
                    f"a message record of {pos - start} bytes is shorter than its header",
                )
            channel_id, _, log_time, _ = _MESSAGE_HEAD.unpack_from(raw, start)
            yield Message(channel_id, log_time, raw[start + 22 : pos])
        elif opcode in (
            _SCHEMA,
            _CHANNEL,
        ):  # any other record type in a chunk is skipped, as the spec allows
            yield _record(opcode, raw, start, pos)


def _decompress(compression: str, data: bytes, limit: int) -> bytes:
    """A chunk's data, decompressed to at most its declared size `limit` (mcap itself trusts the
    size in the zstd frame, which a bomb sets as large as it likes)."""
    try:
        if compression == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                parts, size = [], 0
                while size <= limit and (part := reader.read(limit + 1 - size)):
                    parts.append(part)
                    size += len(part)
                raw = b"".join(parts)
        elif compression == "lz4":
            raw = lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=limit + 1)
        elif compression == "":
            raw = data
        else:
            raise ClipError("truncated", f"a chunk has unknown compression {compression!r}")
    except (zstandard.ZstdError, RuntimeError) as e:  # lz4 reports a corrupt frame as RuntimeError
        detail = f"a {compression} chunk cannot be decompressed: {e}"
        raise ClipError("truncated", detail) from e
    if len(raw) != limit:
        held = "more" if len(raw) > limit else f"only {len(raw)}"
        raise ClipError("truncated", f"a chunk declares {limit} bytes uncompressed, holds {held}")
    return raw
