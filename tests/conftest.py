"""Shared fixtures: an isolated FLYWHEEL_HOME, a real S3-compatible server on 127.0.0.1, clip makers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.update(
    DAGSTER_DISABLE_TELEMETRY="1", MLFLOW_DISABLE_TELEMETRY="true", NO_ALBUMENTATIONS_UPDATE="1",
    AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
)  # fmt: skip
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("FLYWHEEL_CONFIG", None)
if os.environ.get("PYTEST_XDIST_WORKER"):  # several test processes share the cores: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from flywheel.clips import write_clip  # noqa: E402
from flywheel.store import open_store  # noqa: E402

CLASSES = ["clear_road", "vehicle", "pedestrian", "cyclist", "red_light", "obstacle"]


def pytest_configure(config):
    """pytest-xdist up to 3.8 keeps an xdist_group on one worker by renaming its tests, which pytest 9.2 no longer
    lets it do: the group is spread over the workers (the Label Studio tests each started a server), so such a pair
    is refused here rather than run slowly."""
    if config.getoption("dist", None) != "loadgroup" or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import xdist
    from packaging.version import Version

    if Version(pytest.__version__) >= Version("9.2") and Version(xdist.__version__) <= Version("3.8.0"):
        raise pytest.UsageError(f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__} ignores "
                                "xdist_group; install the dev extras' pytest: pip install -e '.[dev]'")  # fmt: skip


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Tests marked `slow` (whole runs end to end, a minute or more each) go first, the rest keep their order: the
    workers then finish together, where a long test started last would keep one of them busy alone. Under
    pytest-xdist every worker sorts the same items the same way. `-m "not slow"` leaves them out."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(autouse=True)
def flywheel_home(tmp_path, monkeypatch):
    """Every test gets its own FLYWHEEL_HOME and DAGSTER_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


@contextlib.contextmanager
def moto_server(env: dict | None = None):
    """A moto S3 (and IAM) server on 127.0.0.1 for the `with` block: its endpoint URL."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1, started for the test session and stopped after it."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_root(s3_endpoint):
    import boto3

    bucket = f"fw-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/flywheel"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """The same store tests on both backends."""
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_store(request.getfixturevalue("s3_root"), endpoint_url=endpoint)


def jpeg(seed: int = 0, h: int = 24, w: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))[1].tobytes()


def make_clip(
    clip_id: str = "clip-1", *, n: int = 3, encoding: str = "protobuf", label: str | None = "vehicle",
    meta: dict | None = None, image: bytes | None = None, fmt: str = "jpeg", cameras=("front",),
) -> bytes:  # fmt: skip
    """A small contract-compliant clip (tests break it on purpose where they need to)."""
    t0 = 1_700_000_000_000_000_000
    frames = [
        (cam, t0 + i * 100_000_000, fmt, image if image is not None else jpeg(i))
        for cam in cameras
        for i in range(n)
    ]
    truth = [(t0 + i * 100_000_000, label) for i in range(n)] if label else []
    m = {"clip_id": clip_id, "vehicle_id": "veh-1", "trigger": "random",
         "recorded_at": "2026-11-01T10:00:00+00:00", "condition": "day"}  # fmt: skip
    m.update(meta or {})
    m = {k: v for k, v in m.items() if v is not None}
    return write_clip(m, frames, truth, encoding=encoding)


def chunk_clip(
    data: bytes, *, uncompressed_size: int, crc: int = 1, compression: str = "zstd"
) -> bytes:
    """A clip whose first record is one chunk: `data`, declaring `uncompressed_size` bytes.

    Nothing checks the declaration before a reader opens the chunk: it is how a decompression bomb
    (a few KB that declare GBs) or a chunk that lies about its size reaches the reader.
    """
    from mcap.data_stream import RecordBuilder
    from mcap.records import Chunk, DataEnd, Footer, Header, Metadata

    out = RecordBuilder()
    out.write(b"\x89MCAP0\r\n")
    Header(profile="", library="test").write(out)
    Chunk(compression=compression, data=data, message_start_time=0, message_end_time=0,
          uncompressed_crc=crc, uncompressed_size=uncompressed_size).write(out)  # fmt: skip
    Metadata(name="clip", metadata={"clip_id": "bomb"}).write(out)
    DataEnd(data_section_crc=0).write(out)
    Footer(summary_start=0, summary_offset_start=0, summary_crc=0).write(out)
    out.write(b"\x89MCAP0\r\n")
    return out.end()


def put_raw(store, name: str, data: bytes) -> None:
    """Upload under a name that is no valid store key, as a fleet client can (S3 takes any name)."""
    if hasattr(store, "path"):
        (store.path / name).parent.mkdir(parents=True, exist_ok=True)
        (store.path / name).write_bytes(data)
    else:
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{name}", Body=data)
