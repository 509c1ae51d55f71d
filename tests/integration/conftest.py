"""Real services for the production-profile tests, all on 127.0.0.1.

PostgreSQL, RabbitMQ and Redis are expected to run already (CI starts them as service
containers); where one is not reachable its tests skip with a message saying how to start it, or
fail when FLYWHEEL_REQUIRE_SERVICES=1 (as in CI).
What the tests need beyond that (an S3-compatible server, an MLflow server, Celery workers)
they start themselves and stop. Every session gets databases and buckets of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = REPO / "production"
VENV_BIN = Path(sys.executable).parent
PG = os.environ.get("FLYWHEEL_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
RABBITMQ = os.environ.get("FLYWHEEL_TEST_RABBITMQ", "pyamqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("FLYWHEEL_TEST_REDIS", "redis://127.0.0.1:6379/0")
SESSION = uuid.uuid4().hex[:8]

# Small enough for two CPU cores, big enough to learn something (tests/test_stages.py's TINY).
TINY = {
    "sim.frames_per_clip": 4, "image_size": 32, "train.epochs": 1, "train.width": 8, "train.depth": 1,
    "train.batch_size": 32, "gate.floor": 0.0, "gate.min_slice_frames": 1000, "dataset.golden_size": 10,
    "train.device": "cpu", "train.num_workers": 0, "ingest.workers": 2,
}  # fmt: skip


def _reachable(url: str, default_port: int) -> bool:
    from urllib.parse import urlsplit

    u = urlsplit(url.replace("+psycopg2", ""))
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((u.hostname or "127.0.0.1", u.port or default_port)) == 0


def _require(url: str, port: int, what: str) -> None:
    """A service the test needs: a skip saying how to start it where it is not reachable, a failure
    when FLYWHEEL_REQUIRE_SERVICES=1 (CI: a missing service must not pass as skipped tests)."""
    if not _reachable(url, port):
        why = f"{what} is not reachable at {url}: {_HOW_TO_START[what]}"
        if os.environ.get("FLYWHEEL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{why} (FLYWHEEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
        pytest.skip(why)


_HOW_TO_START = {
    "PostgreSQL": "start one (docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16) "
    "or point FLYWHEEL_TEST_PG at one (postgresql+psycopg2://user:pass@host:port)",
    "RabbitMQ": "start one (docker run -d -p 5672:5672 rabbitmq:3) or point FLYWHEEL_TEST_RABBITMQ at one",
    "Redis": "start one (docker run -d -p 6379:6379 redis:7) or point FLYWHEEL_TEST_REDIS at one",
}


# ---------------------------------------------------------------- PostgreSQL


def _admin():
    import psycopg2

    conn = psycopg2.connect(PG.replace("+psycopg2", "") + "/postgres", connect_timeout=5)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def postgres():
    """A factory of fresh databases (URLs); all of them are dropped at the end of the session."""
    _require(PG, 5432, "PostgreSQL")
    made: list[str] = []

    def create(purpose: str) -> str:
        name = f"fw_{SESSION}_{purpose}_{len(made)}"
        conn = _admin()  # CREATE DATABASE refuses a transaction, so no `with conn`
        try:
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        made.append(name)
        return f"{PG}/{name}"

    yield create
    conn = _admin()
    try:
        for name in made:
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@pytest.fixture
def dagster_home(postgres, tmp_path, monkeypatch):
    """DAGSTER_HOME with production/dagster.yaml (the production instance) on a fresh PostgreSQL database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PRODUCTION / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", postgres("dagster"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def pg_instance(dagster_home):
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        yield instance


# ---------------------------------------------------------------- brokers


@pytest.fixture(scope="session", params=["RabbitMQ", "Redis"])
def broker_url(request):
    """The Celery broker, each of the two production supports: RabbitMQ (with the rpc:// result
    backend) and Redis (results in Redis too; DAGSTER_CELERY_BACKEND names it)."""
    url, port = {"RabbitMQ": (RABBITMQ, 5672), "Redis": (REDIS, 6379)}[request.param]
    _require(url, port, request.param)
    return url


def celery_backend(broker_url: str) -> str:
    """The result backend that goes with a broker: Redis keeps results itself, RabbitMQ answers over rpc://."""
    return broker_url if broker_url.startswith("redis://") else "rpc://"


# ---------------------------------------------------------------- MLflow server


class _Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, bucket: str):
        self.proc, self.port, self.log, self.bucket = proc, port, log, bucket
        self.uri = f"http://127.0.0.1:{port}"

    def wait(self, timeout: float = 180) -> str:
        try:
            wait_for_port(self.port, timeout=timeout, proc=self.proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(
                f"mlflow server did not start: {e}\n{self.log.read_text()[-3000:]}"
            ) from None
        return self.uri


@pytest.fixture(scope="session")
def _mlflow_server_started(postgres, s3_endpoint, tmp_path_factory):
    """`mlflow server` on PostgreSQL with artifacts in an S3 bucket (moto), started once per session.

    Schema migrations take tens of seconds, so tests that need it come last in the session
    (`mlflow_server` only waits for the port).
    """
    import boto3

    bucket = f"fw-mlflow-{SESSION}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow") / "server.log"
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [
        str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", postgres("mlflow"),
        "--artifacts-destination", f"s3://{bucket}/artifacts", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield _Server(proc, port, log, bucket)
    finally:
        _stop_group(proc)


def pytest_collection_modifyitems(items):
    """Tests on the MLflow server go last, so that its start overlaps the other tests."""
    items.sort(key=lambda item: "mlflow_server" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session", autouse=True)
def _start_mlflow_early(request):
    """Start the MLflow server with the first integration test when a later one needs it."""
    wanted = any("mlflow_server" in getattr(i, "fixturenames", ()) for i in request.session.items)
    # under pytest-xdist every worker sees every test: the one that runs a test on the server starts it
    if wanted and _reachable(PG, 5432) and not os.environ.get("PYTEST_XDIST_WORKER"):
        request.getfixturevalue("_mlflow_server_started")


@pytest.fixture
def mlflow_server(_mlflow_server_started) -> _Server:
    _mlflow_server_started.wait()
    return _mlflow_server_started


def _stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group we started (server and its workers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ---------------------------------------------------------------- the production profile


@pytest.fixture
def prod_config(s3_root, s3_endpoint, tmp_path, monkeypatch):
    """production/flywheel.yaml pointed at this session's services (tiny training), as FLYWHEEL_CONFIG.

    Returns a function: call it with the MLflow URI (or None to keep a local tracking store)
    and any more overrides; it writes the file, sets FLYWHEEL_CONFIG and returns the path.
    """

    def write(tracking_uri: str | None = None, **overrides) -> Path:
        data = yaml.safe_load((PRODUCTION / "flywheel.yaml").read_text())
        data["store"].update(root=s3_root, endpoint_url=s3_endpoint)
        data["mlflow"]["tracking_uri"] = tracking_uri
        for dotted, value in {**TINY, **overrides}.items():
            *parents, leaf = dotted.split(".")
            node = data
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        path = tmp_path / "flywheel.yaml"
        path.write_text(yaml.safe_dump(data))
        monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))
        if tracking_uri:
            monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
        return path

    return write


# ---------------------------------------------------------------- Celery workers


@contextmanager
def celery_workers(n: int, *, queue: str, env: dict, logdir: Path, timeout: float = 120):
    """`n` dagster-celery workers (one task at a time each) on `queue`; stopped on exit.

    Yields the workers' node names once every one of them answers a ping.
    """
    from celery import Celery

    names = [f"fw{i}-{queue}@{socket.gethostname()}" for i in range(n)]
    procs = []
    try:
        for i, name in enumerate(names):
            cmd = [
                str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                "-y", str(PRODUCTION / "celery.yaml"), "-q", queue, "-n", name.split("@")[0], "-l", "INFO",
                "--", "--pool=solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            with open(logdir / f"worker{i}.log", "wb") as out:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))  # fmt: skip
        app = Celery(broker=env["DAGSTER_CELERY_BROKER_URL"])
        deadline = time.monotonic() + timeout
        answered: set[str] = set()
        while answered != set(names):
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join((logdir / f"worker{i}.log").read_text()[-2000:] for i in range(n))
                raise RuntimeError(
                    f"celery workers {names} not all up (answered: {sorted(answered)}):\n{logs}"
                )
            for reply in app.control.ping(destination=names, timeout=1.0):
                answered |= set(reply)
        yield names
    finally:
        for p in procs:
            _stop_group(p)
