"""Who may deploy a challenger: the gate's recorded decision, a person's approval where the gate asks
for one (`gate.require_approval`), or a force naming one version and who forced it.

    models/<model>/evaluations/v<N>.json   the gate's decision (written by the evaluation stage)
    approvals/<model>/v<N>.json             create-once: who approved, why, the weights approved
    forces/<model>/v<N>.json                create-once: who forced a version the gate kept, why

Each record names the sha256 of the weights the gate judged; the deploy refuses other weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from flywheel import layout
from flywheel.config import Settings
from flywheel.recovery import identity
from flywheel.store import Store
from flywheel.tracking import CHALLENGER, CHAMPION, Tracker


def gate_decision(store: Store, settings: Settings, tracker: Tracker) -> dict:
    """The gate's decision on the current challenger, as `evaluate_challenger` recorded it."""
    version = tracker.alias(CHALLENGER)
    if version is None:
        raise ValueError(f"model {settings.mlflow.model_name!r} has no challenger: train one first")
    return store.read_json(layout.evaluation_key(settings.mlflow.model_name, version))["gate"]


def _current_judged(store: Store, settings: Settings, tracker: Tracker, version: str, what: str) -> tuple[dict, str]:
    """(the gate's decision, the sha256 of the weights it judged) of `version`, which must be the current
    challenger."""
    gate = gate_decision(store, settings, tracker)  # raises when there is no challenger yet
    current = tracker.alias(CHALLENGER)
    if version != current:
        raise ValueError(f"v{version} is not the current challenger (v{current}): only the challenger can be {what}")
    judged = store.read_json(layout.evaluation_key(settings.mlflow.model_name, version)).get("weights_sha256") or {}
    return gate, judged.get("challenger")


def _record(store: Store, key: str, record: dict) -> dict:
    store.create(key, json.dumps(record, indent=2).encode())  # create-exclusive: a second one does not rewrite the first
    return store.read_json(key)


def approve(store: Store, settings: Settings, tracker: Tracker, version: str, *, by: str | None = None,
            reason: str, via: str = "command line") -> dict:  # fmt: skip
    """Record that `by` (default: the account, `identity`) approves promoting challenger `version`
    (`gate.require_approval`), and why, with the account that wrote it; the first approval of a
    version stands. Only the current challenger, once it passed the gate."""
    version = str(version).removeprefix("v")
    if not reason.strip():
        raise ValueError("an approval needs why (--reason)")
    gate, judged = _current_judged(store, settings, tracker, version, "approved")
    if not gate["passed"]:
        raise ValueError(f"challenger v{version} did not pass the gate, so there is nothing to approve: {gate['reason']}")
    who = identity()
    record = {"version": version, "by": (by or "").strip() or who["account"], **who, "via": via,
              "reason": reason.strip(), "at": datetime.now(UTC).isoformat(),
              "weights_sha256": judged}  # the weights approved, not only a version number  # fmt: skip
    record = _record(store, layout.approval_key(settings.mlflow.model_name, version), record)
    tracker.set_tags(tracker.version_run(version), {"approved_by": record["by"]})
    return record


def approval(store: Store, settings: Settings, version: str) -> dict | None:
    """The approval record of a model version, or None."""
    key = layout.approval_key(settings.mlflow.model_name, str(version).removeprefix("v"))
    return store.read_json(key) if store.exists(key) else None


def force(store: Store, settings: Settings, tracker: Tracker, version: str, *, reason: str) -> dict:
    """Record that the account running this (`identity`) forces the deploy of challenger `version`,
    which the gate kept, and why: for that version and the weights the gate judged, nothing else (the
    next challenger faces the gate as usual). The first force of a version stands; a forced version
    needs no approval."""
    version = str(version).removeprefix("v")
    if not reason.strip():
        raise ValueError("a force needs why (--reason)")
    gate, judged = _current_judged(store, settings, tracker, version, "forced")
    if gate["passed"]:
        raise ValueError(f"challenger v{version} passed the gate: there is nothing to force"
                         + (" (it waits for flywheel approve)" if settings.gate.require_approval else ""))  # fmt: skip
    record = {"version": version, **identity(), "reason": reason.strip(), "at": datetime.now(UTC).isoformat(),
              "gate_reason": gate["reason"], "weights_sha256": judged}  # fmt: skip
    record = _record(store, layout.force_key(settings.mlflow.model_name, version), record)
    tracker.set_tags(tracker.version_run(version), {"forced_by": record["account"], "forced_why": record["reason"]})
    return record


def forced(store: Store, settings: Settings, version: str) -> dict | None:
    """The force record of a model version, or None."""
    key = layout.force_key(settings.mlflow.model_name, str(version).removeprefix("v"))
    return store.read_json(key) if store.exists(key) else None


def held_back(store: Store, settings: Settings, tracker: Tracker) -> tuple[str, str] | None:
    """Why the current challenger is not to be deployed now: ("kept", the gate's reason) or
    ("awaiting-approval", what to do); None when it may be deployed (passed and approved where
    approval is required, or forced for this version)."""
    gate = gate_decision(store, settings, tracker)
    version = tracker.alias(CHALLENGER)
    if forced(store, settings, version) is not None:
        return None
    if not gate["passed"]:
        return "kept", f"the gate kept the champion ({gate['reason']})"
    if settings.gate.require_approval and approval(store, settings, version) is None:
        return "awaiting-approval", (f"challenger v{version} passed the gate and waits for approval "
                                     f"(gate.require_approval): flywheel approve v{version} --reason WHY")  # fmt: skip
    return None


@dataclass(frozen=True)
class Clearance:
    """What lets the current challenger deploy: the gate's record, the weights it judged, an approval, a force."""

    version: str
    evaluation: dict
    judged: str | None  # sha256 of the weights the gate judged
    approved: dict | None
    forced_by: dict | None  # {who, why, host, at, gate_reason} of a force
    already: dict | None  # the deploy manifest when this version is deployed already (a rerun)


def clearance(store: Store, settings: Settings, tracker: Tracker) -> Clearance:
    """The challenger's clearance to deploy, or ValueError saying why it has none: the gate kept it and no
    one forced it, an approval or force names other weights than the gate judged, or a required approval
    is missing. A version deployed already comes back with its manifest in `already`."""
    from flywheel.deployment import deploy  # imports onnxruntime: only the deploy step needs it

    version, model_name = tracker.alias(CHALLENGER), settings.mlflow.model_name
    evaluation = store.read_json(layout.evaluation_key(model_name, version))
    gate, force_record = evaluation["gate"], forced(store, settings, version)
    if not gate["passed"] and force_record is None:
        raise ValueError(f"challenger v{version} did not pass the gate: {gate['reason']}")
    cur = deploy.current(store, model_name)
    if cur is not None and cur["version"] == f"v{version}" and tracker.alias(CHAMPION) == version:
        return Clearance(version, evaluation, None, None, None, store.read_json(cur["manifest"]))
    judged = (evaluation.get("weights_sha256") or {}).get("challenger")
    approved = approval(store, settings, version)
    for what, record in (("approval", approved), ("force", force_record)):
        if record and record.get("weights_sha256") and judged and record["weights_sha256"] != judged:
            raise ValueError(f"the {what} of v{version} names other weights ({record['weights_sha256'][:12]}...) "
                             f"than the gate judged ({judged[:12]}...): refusing to deploy")  # fmt: skip
    by = ({"who": force_record["account"], "why": force_record["reason"], "host": force_record["host"],
           "at": force_record["at"], "gate_reason": force_record["gate_reason"]} if force_record else None)  # fmt: skip
    if settings.gate.require_approval and approved is None and by is None:
        raise ValueError(f"challenger v{version} waits for approval (gate.require_approval): flywheel approve v{version}")
    return Clearance(version, evaluation, judged, approved, by, None)
