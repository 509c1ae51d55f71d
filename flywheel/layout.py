"""The store layout (DESIGN.md §2): every key the flywheel reads or writes is spelled here, and only here.

    landing/<vehicle>/<date>/<clip>.mcap     clips as uploaded by the fleet
    quarantine/<...>.mcap + .reason.json     rejected clips, each with its reason
    claims/<vehicle>/<date>/<clip>.mcap      the batch that took that landing clip (created once)
    batches/<id>.plan.json                   a commit under way: its plan, deleted when it ends
    batches/<id>.json, <id>.accepted.json    a fleet batch's clips; the clips its validation accepted
    batches/<id>.parked.json                 a batch whose ingest failed too often: why, given up
    frames/batch=<id>/part-0.parquet         frames of one batch
    staging/frames/<id>.parquet              frames its validation parsed, until the frames step commits them
    labels/batch=<id>/part-0.parquet         labels of one batch
    augmented/batch=<id>/part-0.parquet      labeled rows with their split + augmented copies
    labeling/queue/<id>.json                 Label Studio import tasks for one batch
    labeling/images/<id>/<frame>.<ext>       the images those tasks show
    labeling/done/<name>.json                Label Studio exports dropped back by annotators
    datasets/<name>/v<N>/manifest.json       a dataset version (written last) ...
    datasets/<name>/v<N>/shards/batch=<id>/  ... and the shards it first wrote
    datasets/<name>/golden/v<K>.json         golden test frames
    datasets/<name>/fixed_set.json           the fixed held-out set: frame ids, created once, never rewritten
    evaluations/<model>/v<version>.json      challenger vs champion and the gate decision
    deploy/<model>/<version>/model.onnx      a deployed model + manifest.json
    deploy/<model>/current.json              the version the fleet runs
    deploy/<model>/lease/<n>.json            the lock on current.json + the `champion` alias (generation n)
    tuning/<dataset>/trainer_config.json     the best trainer recipe Optuna found for a dataset
    sim/state.json                           the fleet simulator's clock (demo and tests only)

Names that become part of a key (dataset, model, version, batch ids) are checked here too.
"""

from __future__ import annotations

import hashlib
import re

LANDING = "landing/"
QUARANTINE = "quarantine/"
CLAIMS = "claims/"
BATCHES = "batches/"
LABELING_QUEUE = "labeling/queue/"
LABELING_DONE = "labeling/done/"
LABELING_IMAGES = "labeling/images/"
TUNING = "tuning/"
CAMPAIGNS = "campaigns/"
SIM_STATE = "sim/state.json"
REASON_SUFFIX = ".reason.json"

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def check_name(value: str, what: str) -> str:
    """`value` if it can stand as one path segment of a key (dataset, model, version), else ValueError."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r}: use 1-128 of [A-Za-z0-9._-], not '.' or '..'")
    return value


# ---------------------------------------------------------------- landing, quarantine, batches


def landing_key(vehicle_id: str, day: str, clip_id: str) -> str:
    return f"{LANDING}{vehicle_id}/{day}/{clip_id}.mcap"


def quarantine_key(clip_key: str) -> str:
    """Where a landing clip goes when it is rejected (same path below quarantine/)."""
    return QUARANTINE + clip_key.removeprefix(LANDING)


def reason_key(clip_key: str) -> str:
    """The JSON reason beside a quarantined clip."""
    return quarantine_key(clip_key) + REASON_SUFFIX


def landing_key_of(quarantine_key: str) -> str:
    """Where a quarantined clip came from (and goes back to when it is requeued)."""
    return LANDING + quarantine_key.removeprefix(QUARANTINE)


def sanitized_key(name: str) -> str:
    """A valid key for an upload whose name is not one: `landing/v1/d/my clip.mcap` ->
    `landing/v1/d/my_clip-<hash of the name>.mcap`. Characters outside the key alphabet and '..'
    segments become '_'; the hash keeps the result apart from any upload that was named that way."""
    from flywheel.store import KEY_CHARS  # here: layout stays free of pyarrow, which store imports

    segments = ["".join(c if c in KEY_CHARS else "_" for c in s) for s in name.split("/")]
    path = "/".join("_" if s == ".." else s for s in segments)
    stem, dot, ext = path.rpartition(".")
    tag = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}-{tag}.{ext}" if dot and "/" not in ext else f"{path}-{tag}"


def claim_key(clip_key: str) -> str:
    """The claim a batch creates on a landing clip: whoever creates it first holds the clip."""
    return CLAIMS + clip_key.removeprefix(LANDING)


def clip_key_of_claim(claim: str) -> str:
    return LANDING + claim.removeprefix(CLAIMS)


def plan_key(batch_id: str) -> str:
    return f"{BATCHES}{batch_id}.plan.json"


def is_plan_key(key: str) -> bool:
    return key.startswith(BATCHES) and key.endswith(".plan.json")


def batch_key(batch_id: str) -> str:
    return f"{BATCHES}{batch_id}.json"


def accepted_key(batch_id: str) -> str:
    return f"{BATCHES}{batch_id}.accepted.json"


def validation_key(batch_id: str) -> str:
    """Written by a batch's first validation as it starts: a later one knows it may have released
    claims of the batch's clips (a quarantined clip's claim), so it reads them."""
    return f"{BATCHES}{batch_id}.validation.json"


def parked_key(batch_id: str) -> str:
    """A batch whose ingest failed `sensor.max_ingest_attempts` times: its last error (not retried)."""
    return f"{BATCHES}{batch_id}.parked.json"


def is_batch_key(key: str) -> bool:
    """`batches/<id>.json`, not the `.accepted.json` beside it."""
    return key.startswith(BATCHES) and key.endswith(".json") and key.count(".") == 1


def batch_id_of(batch_key: str) -> str:
    """The id in `batches/<id>.json`."""
    return batch_key.removeprefix(BATCHES).removesuffix(".json")


# ---------------------------------------------------------------- per batch


def frames_key(batch_id: str) -> str:
    return f"frames/batch={batch_id}/part-0.parquet"


def staged_frames_key(batch_id: str) -> str:
    return f"staging/frames/{batch_id}.parquet"


def labels_key(batch_id: str) -> str:
    return f"labels/batch={batch_id}/part-0.parquet"


def augmented_key(batch_id: str) -> str:
    return f"augmented/batch={batch_id}/part-0.parquet"


# ---------------------------------------------------------------- the human queue


def queue_key(batch_id: str) -> str:
    return f"{LABELING_QUEUE}{batch_id}.json"


def done_key(batch_id: str) -> str:
    return f"{LABELING_DONE}{batch_id}.json"


def labeling_image_key(batch_id: str, frame_id: str, extension: str) -> str:
    return f"{LABELING_IMAGES}{batch_id}/{frame_id}.{extension}"


# ---------------------------------------------------------------- datasets


def versions_prefix(name: str) -> str:
    """Prefix of every `datasets/<name>/v<N>/...` key."""
    return f"datasets/{check_name(name, 'dataset name')}/v"


def manifest_key(name: str, version: int) -> str:
    return f"{versions_prefix(name)}{int(version)}/manifest.json"


def shards_prefix(name: str, version: int, batch_id: str) -> str:
    return f"{versions_prefix(name)}{int(version)}/shards/batch={batch_id}"


def golden_prefix(name: str) -> str:
    return f"datasets/{check_name(name, 'dataset name')}/golden/"


def golden_key(name: str, version: int) -> str:
    return f"{golden_prefix(name)}v{int(version)}.json"


def fixed_set_key(name: str) -> str:
    """The fixed held-out set of a dataset (flywheel/evaluation/evalset.py): created once, never rewritten."""
    return f"datasets/{check_name(name, 'dataset name')}/fixed_set.json"


# ---------------------------------------------------------------- evaluation and deployment


def campaign_key(name: str) -> str:
    """A mining campaign's record (flywheel/engine/campaigns.py)."""
    return f"{CAMPAIGNS}{check_name(name, 'campaign name')}/campaign.json"


def campaign_query_key(name: str) -> str:
    """A campaign's query and reference frames (model input arrays, npz)."""
    return f"{CAMPAIGNS}{check_name(name, 'campaign name')}/query.npz"


def force_key(model_name: str, version: str) -> str:
    """Who forced the deploy of a model version the gate kept, when and why (`flywheel force`)."""
    return f"forces/{check_name(model_name, 'model name')}/v{check_name(str(version), 'version')}.json"


def approval_key(model_name: str, version: str) -> str:
    """Who approved the promotion of a model version, when and why (`gate.require_approval`)."""
    return f"approvals/{check_name(model_name, 'model name')}/v{check_name(str(version), 'version')}.json"


def evaluation_key(model_name: str, version: str) -> str:
    return f"evaluations/{check_name(model_name, 'model name')}/v{check_name(str(version), 'version')}.json"


def deploy_prefix(model_name: str, version: str) -> str:
    return f"deploy/{check_name(model_name, 'model name')}/{check_name(str(version), 'version')}"


def deploy_onnx_key(model_name: str, version: str) -> str:
    return f"{deploy_prefix(model_name, version)}/model.onnx"


def deploy_int8_key(model_name: str, version: str) -> str:
    """The int8 graph built beside a version's fp32 `model.onnx` (deploy.serve)."""
    return f"{deploy_prefix(model_name, version)}/model.int8.onnx"


def deploy_manifest_key(model_name: str, version: str) -> str:
    return f"{deploy_prefix(model_name, version)}/manifest.json"


def current_key(model_name: str) -> str:
    return f"deploy/{check_name(model_name, 'model name')}/current.json"


def lease_prefix(model_name: str) -> str:
    return f"deploy/{check_name(model_name, 'model name')}/lease/"


def lease_key(model_name: str, generation: int) -> str:
    """Generation `generation` of the deploy lease (zero-padded, so keys sort by generation)."""
    return f"{lease_prefix(model_name)}{int(generation):08d}.json"


# ---------------------------------------------------------------- tuning


def trainer_config_key(dataset_name: str) -> str:
    """The tuned trainer recipe of a dataset (`flywheel tune`), read by every challenger training."""
    return f"{TUNING}{check_name(dataset_name, 'dataset name')}/trainer_config.json"


def baseline_check_key(dataset_name: str) -> str:
    """The newest challenger of a dataset against the yardstick CNN on val, read by the retune sensor."""
    return f"{TUNING}{check_name(dataset_name, 'dataset name')}/baseline_check.json"
