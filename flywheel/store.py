"""The store: one root holding every object of the flywheel, a local folder or S3.

Keys are `/`-separated paths under the root (`landing/v1/2026-01-01/c1.mcap`). Every write
that readers trust is atomic: a local write goes to a temporary name and is renamed; an S3
PUT (or a completed multipart upload) only becomes visible whole.

What the fleet uploads is not ours to name: `list` reports an object whose name is no valid key
(a space, say) with `bad_key` set, and `move_bad_key` is the one thing done with it.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded where Parquet is read or written: a clip-reading worker process needs none of it
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-=/")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch

    @property
    def bad_key(self) -> bool:
        """The name is no valid key (an upload named `my clip.mcap`): it cannot be read, only moved
        to a valid key with `Store.move_bad_key`."""
        return not is_valid_key(self.key)


def is_valid_key(key: str) -> bool:
    if not key or key.startswith("/") or ".." in key.split("/"):
        return False
    return not set(key) - KEY_CHARS


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise ValueError naming it."""
    if not is_valid_key(key):
        raise ValueError(f"invalid store key {key!r}: use letters, digits, '._-=/' and no '..'")
    return key


def _check_listed_name(name: str) -> str:
    """`name` if `list` can have reported it: any characters, but relative and without '..'."""
    if not name or name.startswith("/") or ".." in name.split("/") or "\0" in name:
        raise ValueError(f"invalid object name {name!r}: not a relative name below the store root")
    return name


class Store(ABC):
    """Objects under one root. `open_store(root)` picks the backend."""

    root: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write `data` atomically: readers see the old object or the new one, never a part."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write `data` to `key` only if no object is there: True if this call created it, False if one
        existed. Atomic (create-exclusive locally, a conditional PUT on S3): of two racing callers,
        exactly one wins, and the loser sees the winner's whole object."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key; names that are no valid key
        are listed too, with `bad_key` set."""

    def list_after(
        self, prefix: str, start_after: str = "", limit: int = 1000
    ) -> tuple[list[ObjectInfo], bool]:
        """A page of `list(prefix)`: the objects whose key sorts after `start_after` (no object need be
        there), in key order, and whether more follow. For listing a big prefix a page at a time,
        resuming where the last page ended. A backend that pages (S3) gives at most `limit` per call;
        this default lists the prefix once and gives them all (a folder walk costs the same either way)."""
        if limit < 1:
            raise ValueError(f"list_after needs limit >= 1, got {limit}")
        return [o for o in self.list(prefix) if o.key > start_after], False

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Move one object; `dst` is complete before `src` disappears."""

    @abstractmethod
    def move_bad_key(self, name: str, dst: str) -> None:
        """Move an object `list` reported with `bad_key` to the valid key `dst`, as `move` does."""

    @abstractmethod
    def arrow_fs(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the root path in it, for Parquet I/O."""

    def uri(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{check_key(key)}"

    def arrow_path(self, key: str) -> str:
        _, base = self.arrow_fs()
        return f"{base.rstrip('/')}/{check_key(key)}"

    def read_json(self, key: str):
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.uri(key)} is not valid JSON: {e}") from e

    def write_json(self, key: str, obj) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_parquet(self, key: str, table: pa.Table, **options) -> int:
        """Write `table` to `key` atomically; returns the bytes written."""
        import pyarrow.parquet as pq

        fs, _ = self.arrow_fs()
        final = self.arrow_path(key)
        tmp = self._parquet_tmp_path(final)
        pq.write_table(table, tmp, filesystem=fs, **options)
        if tmp != final:
            fs.move(tmp, final)
        return fs.get_file_info(final).size

    def read_parquet(self, keys: str | list[str], columns: list[str] | None = None, filters=None) -> pa.Table:
        """One table from Parquet objects; `filters` as pyarrow's (e.g. `[("frame_id", "in", ids)]`)."""
        import pyarrow.parquet as pq

        fs, _ = self.arrow_fs()
        paths = [self.arrow_path(k) for k in ([keys] if isinstance(keys, str) else keys)]
        if not paths:
            raise ValueError("read_parquet needs at least one key")
        return pq.ParquetDataset(paths, filesystem=fs, partitioning=None, filters=filters).read(columns=columns)

    def parquet_file(self, key: str) -> pq.ParquetFile:
        import pyarrow.parquet as pq

        fs, _ = self.arrow_fs()
        return pq.ParquetFile(fs.open_input_file(self.arrow_path(key)))

    def _parquet_tmp_path(self, final: str) -> str:
        return final


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike):
        self.path = Path(root).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.root = str(self.path)

    def _p(self, key: str) -> Path:
        return self.path / check_key(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"no object {self.uri(key)}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self._commit(key, data, os.replace)

    def create(self, key: str, data: bytes) -> bool:
        try:
            self._commit(key, data, os.link)  # link fails if the key exists: the whole object appears, or nothing
            return True
        except FileExistsError:
            return False

    def _commit(self, key: str, data: bytes, publish) -> None:
        """Write `data` to a temporary name beside `key`, fsync it, then `publish(tmp, final)`."""
        final = self._p(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            publish(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._p(key).is_file()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every regular file under the root whose key starts with `prefix`, sorted by key.

        Whatever else lies in the folder is not an object, so that nothing listed can block or crash
        a reader: FIFOs, sockets and devices are skipped, and so are symlinks that dangle or lead
        out of the root. Symlinked folders are not walked into (`os.walk` without `followlinks`);
        a symlinked file is listed when it resolves to a regular file inside the root.
        """
        base = self.path / prefix.rsplit("/", 1)[0] if "/" in prefix else self.path
        if not base.is_dir() or not base.resolve().is_relative_to(self.path):
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                full = Path(dirpath) / name
                key = full.relative_to(self.path).as_posix()
                if key.startswith(prefix) and (st := self._regular_file(full)):
                    out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return sorted(out, key=lambda o: o.key)

    def _regular_file(self, path: Path) -> os.stat_result | None:
        """The stat of the regular file at `path`, also through a symlink that stays inside the
        root; else None."""
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                if not path.resolve().is_relative_to(self.path):
                    return None
                st = path.stat()
        except OSError:  # a dangling link, a symlink loop, or removed since the walk saw it
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def delete(self, key: str) -> None:
        self._p(key).unlink(missing_ok=True)

    def move(self, src: str, dst: str) -> None:
        self._move(self._p(src), dst)

    def move_bad_key(self, name: str, dst: str) -> None:
        self._move(self.path / _check_listed_name(name), dst)

    def _move(self, src: Path, dst: str) -> None:
        target = self._p(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, target)

    def arrow_fs(self) -> tuple[pafs.FileSystem, str]:
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), self.root

    def _parquet_tmp_path(self, final: str) -> str:
        Path(final).parent.mkdir(parents=True, exist_ok=True)
        p = Path(final)
        return str(p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp"))


class S3Store(Store):
    """Objects in `s3://bucket/prefix`; boto3 for objects, pyarrow's S3 filesystem for Parquet."""

    def __init__(self, root: str, endpoint_url: str | None = None, region: str = "us-east-1"):
        import boto3
        from botocore.config import Config

        if not root.startswith("s3://") or len(root) <= 5:
            raise ValueError(f"invalid S3 root {root!r}: expected s3://bucket[/prefix]")
        self.root = root.rstrip("/")
        bucket, _, prefix = root[5:].partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        self.region = region
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            config=Config(retries={"mode": "standard", "max_attempts": 5}),
        )
        self._fs: pafs.S3FileSystem | None = None

    def __reduce__(self):
        """Pickled as what opens it again (a boto3 client does not pickle): for worker processes."""
        return (S3Store, (self.root, self.endpoint_url, self.region))

    def _k(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _name(self, name: str) -> str:
        """The S3 key of a name `list` reported, valid key or not (S3 keys are any UTF-8)."""
        _check_listed_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"no object {self.uri(key)}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if e.response["Error"]["Code"] in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as e:
            if e.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        full = self._k(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(f"{self.prefix}/") if self.prefix else 0
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full
        ):
            for o in page.get("Contents", []):
                out.append(ObjectInfo(o["Key"][strip:], o["Size"], o["LastModified"].timestamp()))
        return sorted(out, key=lambda o: o.key)

    def list_after(
        self, prefix: str, start_after: str = "", limit: int = 1000
    ) -> tuple[list[ObjectInfo], bool]:
        """One ListObjectsV2 request: at most `limit` objects (S3 gives 1000 at most) after `start_after`.
        S3 orders keys by their UTF-8 bytes, which is the order of Python's `str` comparison."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"list_after on S3 needs 1 <= limit <= 1000, got {limit}")
        full = self._k(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(f"{self.prefix}/") if self.prefix else 0
        args = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": limit}
        if start_after:  # a position, not an object to read: any name `list` gave will do
            args["StartAfter"] = f"{self.prefix}/{start_after}" if self.prefix else start_after
        page = self.client.list_objects_v2(**args)
        objs = [ObjectInfo(o["Key"][strip:], o["Size"], o["LastModified"].timestamp())
                for o in page.get("Contents", [])]  # fmt: skip
        return objs, bool(page.get("IsTruncated"))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def move(self, src: str, dst: str) -> None:
        self._move(self._k(src), dst)

    def move_bad_key(self, name: str, dst: str) -> None:
        self._move(self._name(name), dst)

    def _move(self, src: str, dst: str) -> None:
        source = {"Bucket": self.bucket, "Key": src}
        self.client.copy_object(Bucket=self.bucket, Key=self._k(dst), CopySource=source)
        self.client.delete_object(Bucket=self.bucket, Key=src)

    def arrow_fs(self) -> tuple[pafs.FileSystem, str]:
        import pyarrow.fs as pafs

        if self._fs is None:
            override = None
            scheme = "https"
            if self.endpoint_url:  # pyarrow ignores AWS_ENDPOINT_URL: pass it explicitly
                scheme, _, override = self.endpoint_url.partition("://")
            self._fs = pafs.S3FileSystem(
                endpoint_override=override, scheme=scheme, region=self.region,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=5),
            )  # fmt: skip
        return self._fs, f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket


def store_for(settings) -> Store:
    """The store of these settings (`flywheel.config.Settings`): the one way the flywheel opens its store."""
    s = settings.store
    return open_store(settings.store_root, endpoint_url=s.endpoint_url, region=s.region)


def open_store(root: str, endpoint_url: str | None = None, region: str = "us-east-1") -> Store:
    """The store at `root`: `s3://bucket/prefix` or a local folder (created if missing)."""
    if root.startswith("s3://"):
        return S3Store(root, endpoint_url=endpoint_url, region=region)
    if "://" in root:
        raise ValueError(f"unsupported store root {root!r}: use a folder or s3://bucket/prefix")
    return LocalStore(root)
