"""The champion: the model the fleet runs (`deploy/<model>/current.json`) and MLflow's `champion` alias.

Stages that need the champion load it here and score a batch's frames with it once.

One truth: `current.json` is what the fleet is served, and the alias must name the same model.
`promote` and `rollback` move both inside one lease (`deploy/<model>/lease/<n>.json`), so a
deploy and a rollback never interleave; `reconcile` repairs the alias when a process died
between the two moves (the served model wins).

The lease is a series of generations, each made with the store's create-exclusive write: whoever
creates generation n+1 holds the lease, which is possible only once generation n is released or
past its expiry. Breaking a stale lease is thus one more create, and of two callers breaking the
same one exactly one wins (a single lease object would need a delete-if-unchanged, which neither
backend offers). Generations are a few hundred bytes, one per promote, rollback or reconcile,
and are kept: deleting one would let a caller that listed long ago create it again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import onnxruntime as ort
import pyarrow as pa

from flywheel import layout
from flywheel.config import Settings
from flywheel.deployment import deploy
from flywheel.model_input import decode_images
from flywheel.predict import EMBEDDING_NAME, Predictions, predict
from flywheel.recovery import process_gone, process_tags
from flywheel.store import Store
from flywheel.tracking import CHAMPION, Tracker

LEASE_TTL_S = 120.0  # a holder writes ONNX, manifest, current.json, one alias: seconds
LEASE_WAIT_S = 180.0  # longer than the TTL, so a waiter outlives the lease of a holder that died
log = logging.getLogger(__name__)


class LeaseTimeoutError(TimeoutError):
    """Another process held the deploy lease for longer than this caller would wait."""


@dataclass(frozen=True)
class Champion:
    """The deployed ONNX graph and its deploy manifest."""

    session: ort.InferenceSession
    manifest: dict

    @property
    def scored_on(self) -> str:
        """Where its scores are computed: onnxruntime's first provider (CPUExecutionProvider, CUDAExecutionProvider)."""
        return self.session.get_providers()[0]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def score(self, frames: pa.Table) -> Predictions:
        """Probabilities and embeddings for every row of a frames table (schema.FRAMES), in row order."""
        col = {c: frames.column(c).to_pylist() for c in ("frame_id", "image", "height", "width")}
        images = decode_images(col["image"], int(self.manifest["image_size"]), frame_ids=col["frame_id"],
                               heights=col["height"], widths=col["width"])  # fmt: skip
        embeds = EMBEDDING_NAME in {o.name for o in self.session.get_outputs()}
        return predict(self.session, images, embeddings=embeds)


def deployed(store: Store, settings: Settings) -> Champion | None:
    """The deployed champion on the compute device (`train.device`, where onnxruntime can), or None
    before the first deploy."""
    if deploy.current(store, settings.mlflow.model_name) is None:
        return None
    return Champion(*deploy.load_deployed(store, settings.mlflow.model_name, settings.train.device))


def promote(store: Store, settings: Settings, tracker: Tracker, *, version: str, onnx_bytes: bytes,
            classes: list[str], metrics: dict, dataset: dict, gate: dict,
            forced_by: dict | None = None, int8: dict | None = None, serve: str = "fp32",
            approval: dict | None = None) -> dict:  # fmt: skip
    """Deploy MLflow model version `version` as `v<version>` and move the `champion` alias to it, under the
    lease; returns the deploy manifest (arguments as `deploy.deploy`'s)."""
    model_name = settings.mlflow.model_name
    with lease(store, model_name, purpose=f"promote v{version}"):
        manifest = deploy.deploy(
            store, model_name=model_name, version=f"v{version}", onnx_bytes=onnx_bytes, classes=classes,
            image_size=settings.image_size, metrics=metrics, dataset=dataset, mlflow_version=version,
            gate=gate, forced_by=forced_by, int8=int8, serve=serve, approval=approval,
        )  # fmt: skip
        tracker.set_alias(CHAMPION, version)
    return manifest


def rollback(store: Store, settings: Settings, tracker: Tracker) -> tuple[str, str]:
    """Move current.json and the `champion` alias back to the previous champion, under the lease;
    (from, to) versions."""
    model_name = settings.mlflow.model_name
    with lease(store, model_name, purpose="rollback"):
        frm, to = deploy.rollback(store, model_name)
        tracker.set_alias(CHAMPION, _mlflow_version(store, deploy.current(store, model_name)))
    return frm, to


def reconcile(store: Store, settings: Settings, tracker: Tracker) -> dict | None:
    """Point the `champion` alias at the served model (current.json wins) if it points elsewhere or is
    missing; returns the repair made (`served`, `alias_was`, `alias_now`), None when they agree.

    With nothing deployed there is no served model to follow, and the alias is left as it is.
    """
    model_name = settings.mlflow.model_name
    cur = deploy.current(store, model_name)
    if cur is None or _mlflow_version(store, cur) == tracker.alias(CHAMPION):
        return None  # in step (the usual case): no lease taken, nothing written
    with lease(store, model_name, purpose="reconcile"):
        cur = deploy.current(store, model_name)  # again, under the lease: a deploy may have just ended
        if cur is None:
            return None
        served, alias = _mlflow_version(store, cur), tracker.alias(CHAMPION)
        if alias == served:
            return None
        tracker.set_alias(CHAMPION, served)
    repair = {"served": cur["version"], "alias_was": alias, "alias_now": served,
              "current_event": cur["event"], "current_updated_at": cur["updated_at"]}  # fmt: skip
    log.warning("model %r: the champion alias named %s while %s is served; moved it to %s",
                model_name, alias, cur["version"], served)  # fmt: skip
    return repair


@contextmanager
def lease(store: Store, model_name: str, *, purpose: str, ttl_s: float = LEASE_TTL_S,
          timeout_s: float = LEASE_WAIT_S, poll_s: float = 0.1) -> Iterator[dict]:  # fmt: skip
    """Hold the deploy lease of `model_name` for the block: the one lock on current.json and the alias.

    Waits while another holder's lease is live; breaks it once past its expiry, or at once when its
    holder was a process on this host that is gone (killed); raises
    LeaseTimeoutError naming the holder after `timeout_s`. Released (marked) when the block ends.
    """
    owner = f"{socket.gethostname()}:{os.getpid()}:{threading.get_native_id()}"
    deadline = time.monotonic() + timeout_s
    while True:
        n, held = _latest_lease(store, model_name)
        live = held is not None and not held.get("released_at")
        # A holder killed on this host need not be waited out: its process is gone (pid and start time).
        dead = live and process_gone(held.get("process") or {})
        if not live or dead or datetime.fromisoformat(held["expires_at"]) <= datetime.now(UTC):
            now = datetime.now(UTC)
            mine = {"owner": owner, "purpose": purpose, "acquired_at": now.isoformat(timespec="milliseconds"),
                    "expires_at": (now + timedelta(seconds=ttl_s)).isoformat(timespec="milliseconds"),
                    "process": process_tags()}  # fmt: skip
            if live:  # its holder died or overran: recorded, so the break can be traced
                mine["broke"] = {k: held[k] for k in ("owner", "purpose", "expires_at")}
            key = layout.lease_key(model_name, n + 1)
            if store.create(key, json.dumps(mine, indent=2).encode()):
                break
            continue  # another caller took generation n + 1 first: look again
        if time.monotonic() >= deadline:
            raise LeaseTimeoutError(
                f"model {model_name!r}: waited {timeout_s:g}s for the deploy lease "
                f"{store.uri(layout.lease_key(model_name, n))}, held by {held['owner']} ({held['purpose']}) "
                f"since {held['acquired_at']}, until {held['expires_at']}"
            )
        time.sleep(poll_s)
    if live:
        log.warning("model %r: broke the deploy lease of %s (%s), expired at %s",
                    model_name, held["owner"], held["purpose"], held["expires_at"])  # fmt: skip
    try:
        yield mine
    finally:
        released = datetime.now(UTC).isoformat(timespec="milliseconds")
        store.write_json(key, {**mine, "released_at": released})


def _latest_lease(store: Store, model_name: str) -> tuple[int, dict | None]:
    """The highest lease generation and its content; (0, None) before the first."""
    prefix = layout.lease_prefix(model_name)
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.json$")
    n = max((int(m.group(1)) for o in store.list(prefix) if (m := pattern.match(o.key))), default=0)
    return n, (store.read_json(layout.lease_key(model_name, n)) if n else None)


def _mlflow_version(store: Store, current: dict) -> str:
    """The MLflow model version of the deployed model `current` (a current.json) names."""
    version = store.read_json(current["manifest"]).get("mlflow_version")
    if version is None:
        raise ValueError(
            f"{store.uri(current['manifest'])} records no mlflow_version: "
            f"the served model {current['version']} has no MLflow version for the {CHAMPION!r} alias"
        )
    return str(version)
