"""Mining campaigns ("find more like this"): the fleet's shadow mode uploads clips that look like
chosen frames.

A campaign is made from an evaluation's worst slice (the deployed champion's, by default) or from
frames a user names. Its query is those frames (at most `max_frames`, decoded to the model input)
and a reference sample of other frames of the latest dataset version, both kept in the store. The
shadow filter embeds them with whatever model is deployed at the time (`queries`), so a campaign
outlives the champion it started with: the match threshold is the similarity that only
`match_share` of the reference frames outside the slice reach, so about that share of ordinary
frames would match. A recorded clip matches when any of its frames' embedding is that close (cosine)
to one of the query's, and is uploaded with trigger `campaign:<name>`.

Its effect (`effect`): the clips it brought (by trigger, over every ingested batch), and the
slice's score before (the champion's evaluation when the campaign began) and after (the newest
evaluation of a model trained on a dataset version that holds the campaign's clips).
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow.compute as pc

from flywheel import layout
from flywheel.config import Settings
from flywheel.data import dataset
from flywheel.deployment import deploy
from flywheel.ingest import list_batches
from flywheel.model_input import decode_images
from flywheel.predict import predict
from flywheel.store import Store

TRIGGER_PREFIX = "campaign:"
SLICE_COLUMNS = ("condition", "camera", "trigger")
REFERENCE_FRAMES = 512


def trigger_of(name: str) -> str:
    """The upload trigger of a campaign's clips."""
    return f"{TRIGGER_PREFIX}{name}"


def parse_slice(text: str) -> tuple[str, str]:
    """"condition=fog" -> ("condition", "fog"), with a clear error for anything else."""
    column, sep, value = text.partition("=")
    if not sep or column not in SLICE_COLUMNS or not value:
        raise ValueError(f"slice {text!r} must look like <column>=<value> with column one of {SLICE_COLUMNS}, "
                         "e.g. condition=fog")  # fmt: skip
    return column, value


def worst_slice(store: Store, settings: Settings) -> tuple[str, dict]:
    """The deployed champion's worst slice by `gate.metric` (enough frames to judge first; trigger and
    golden-set slices left out: a campaign needs something the fleet can find), and its scores."""
    evaluation = champion_evaluation(store, settings)
    metric = settings.gate.metric
    slices = {k: v for k, v in evaluation["challenger"]["per_slice"].items()
              if k.split("=", 1)[0] in ("condition", "camera") and v.get(metric) is not None}  # fmt: skip
    if not slices:
        raise ValueError("the champion's evaluation has no condition or camera slice to mine for; name frames instead")
    name = min(slices, key=lambda k: (bool(slices[k].get("small")), slices[k][metric]))
    return name, slices[name]


def champion_evaluation(store: Store, settings: Settings) -> dict:
    """The evaluation that judged the deployed champion (raises when nothing is deployed)."""
    cur = deploy.current(store, settings.mlflow.model_name)
    if cur is None:
        raise ValueError("a campaign needs a deployed model to embed frames with: deploy one first (flywheel iterate)")
    key = layout.evaluation_key(settings.mlflow.model_name, cur["version"].removeprefix("v"))
    if not store.exists(key):
        raise ValueError(f"the deployed model {cur['version']} has no evaluation ({key}) to read its slices from")
    return store.read_json(key)


def create(store: Store, settings: Settings, name: str, *, slice: str | None = None,
           frame_ids: list[str] | None = None, max_frames: int = 32, match_share: float = 0.05,
           seed: int = 0, source_name: str | None = None) -> dict:  # fmt: skip
    """Start campaign `name` from a slice (`"condition=fog"`), named frames, or (neither) the champion's
    worst slice; writes its query and returns its record. Creating an existing campaign again returns
    it unchanged. `source_name` names who started it in the record (default: how its frames were picked)."""
    layout.check_name(name, "campaign name")
    if store.exists(layout.campaign_key(name)):
        return load(store, name)
    if slice is not None and frame_ids:
        raise ValueError("a campaign mines for a slice or for named frames, not both")
    if not 0 < match_share < 1 or max_frames < 1:
        raise ValueError(f"match_share must be in (0, 1) and max_frames >= 1, got {match_share}, {max_frames}")
    if slice is not None:
        parse_slice(slice)  # a bad slice is named before anything is read
    evaluation = champion_evaluation(store, settings)
    manifest = dataset.load_manifest(store, settings.dataset.name)
    rows = originals(store, manifest)
    fids = rows.column("frame_id").to_pylist()
    rng = np.random.default_rng(seed)
    if frame_ids:
        index = {f: i for i, f in enumerate(fids)}
        missing = [f for f in frame_ids if f not in index]
        if missing:
            raise ValueError(f"{len(missing)} named frame(s) are not in {settings.dataset.name} "
                             f"v{manifest['version']}: {missing[:5]}")  # fmt: skip
        query = np.array([index[f] for f in dict.fromkeys(frame_ids)][:max_frames])
        # the slice it is judged on: the condition most of the named frames share
        conditions = Counter(rows.column("condition").to_pylist()[i] for i in query)
        slice_name, source = f"condition={conditions.most_common(1)[0][0]}", "frames"
    else:
        source = "slice" if slice else "worst slice"
        slice_name = slice or worst_slice(store, settings)[0]
        column, value = parse_slice(slice_name)
        members = np.flatnonzero(np.asarray(rows.column(column).to_pylist(), dtype=object) == value)
        if not len(members):
            raise ValueError(f"no frame of {settings.dataset.name} v{manifest['version']} is in slice {slice_name}")
        query = np.sort(rng.choice(members, size=min(max_frames, len(members)), replace=False))
    column, value = parse_slice(slice_name)
    in_slice = np.asarray(rows.column(column).to_pylist(), dtype=object) == value
    others = np.setdiff1d(np.arange(len(fids)), query)
    reference = np.sort(rng.choice(others, size=min(REFERENCE_FRAMES, len(others)), replace=False))
    size = settings.image_size
    arrays = {"query": _decode(store, manifest, [fids[i] for i in query], size),
              "reference": _decode(store, manifest, [fids[i] for i in reference], size),
              "reference_in_slice": in_slice[reference]}  # fmt: skip
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    store.write_bytes(layout.campaign_query_key(name), buf.getvalue())
    before = evaluation["challenger"]["per_slice"].get(slice_name, {})
    record = {
        "name": name, "trigger": trigger_of(name), "source": source_name or source, "slice": slice_name,
        "frame_ids": [fids[i] for i in query], "reference_frames": len(reference), "match_share": match_share,
        "dataset_version": manifest["version"], "created_at": datetime.now(UTC).isoformat(), "active": True,
        "before": {"model_version": evaluation["challenger_version"], "metric": settings.gate.metric,
                   "value": before.get(settings.gate.metric), "n": before.get("n")},
    }  # fmt: skip
    store.write_json(layout.campaign_key(name), record)  # last: a campaign exists once its query does
    return record


SCARCE_PREFIX = "scarce-"
SCARCE_SOURCE = "scarce slice"  # the record's source of the campaigns the engine starts by itself


def mine_scarce(store: Store, settings: Settings, *, column: str = "condition") -> dict:
    """A campaign for the scarcest value of `column`, while it is below `engine.scarce_share` of the newest
    dataset version's original (labeled) frames: named `scarce-<column>-<value>-v<version>`, its query that
    version's frames of it; the older scarce-slice campaigns stop. One at a time: the fleet's uploads go to
    the one slice the data lacks most, and once it is no longer scarce, to the next. Nothing happens with
    `engine.scarce_share` unset; campaigns people started are left alone. Returns `{"started": [names],
    "stopped": [names], "active": [names], "shares": {value: share}}`."""
    share = settings.engine.scarce_share
    out: dict = {"started": [], "stopped": [], "active": [], "shares": {}}
    if share is None:
        return out
    if settings.task == "detection":
        raise ValueError("scarce-slice mining queries the classifier's embeddings: not available with task: detection")
    if column not in ("condition", "camera"):
        raise ValueError(f"scarce slices are mined by condition or camera, not {column!r}")
    manifest = dataset.load_manifest(store, settings.dataset.name)
    counts = Counter(originals(store, manifest).column(column).to_pylist())
    total = sum(counts.values())
    out["shares"] = {v: round(n / total, 4) for v, n in sorted(counts.items())} if total else {}
    rarest = min(sorted(counts), key=counts.__getitem__) if total else None
    scarce = ({f"{column}={rarest}": f"{SCARCE_PREFIX}{column}-{rarest}-v{manifest['version']}"}
              if rarest is not None and counts[rarest] / total < share else {})  # fmt: skip
    for record in list_campaigns(store):
        mine = record["source"] == SCARCE_SOURCE and record["slice"].startswith(f"{column}=")  # not people's
        if mine and record["active"] and scarce.get(record["slice"]) != record["name"]:
            out["stopped"].append(stop(store, record["name"])["name"])
    for slice_name, name in scarce.items():
        if not store.exists(layout.campaign_key(name)):
            create(store, settings, name, slice=slice_name, match_share=settings.engine.scarce_match_share,
                   seed=settings.engine.seed, source_name=SCARCE_SOURCE)  # fmt: skip
            out["started"].append(name)
    out["active"] = list(scarce.values())
    return out


def load(store: Store, name: str) -> dict:
    key = layout.campaign_key(layout.check_name(name, "campaign name"))
    if not store.exists(key):
        raise ValueError(f"no campaign {name!r} (known: {[c['name'] for c in list_campaigns(store)]})")
    return store.read_json(key)


def list_campaigns(store: Store) -> list[dict]:
    """Every campaign's record, oldest first."""
    records = [store.read_json(o.key) for o in store.list(layout.CAMPAIGNS) if o.key.endswith("/campaign.json")]
    return sorted(records, key=lambda c: c["created_at"])


def stop(store: Store, name: str) -> dict:
    """The fleet stops mining for campaign `name` (its record and effect stay)."""
    record = {**load(store, name), "active": False, "stopped_at": datetime.now(UTC).isoformat()}
    store.write_json(layout.campaign_key(name), record)
    return record


def queries(store: Store, session, manifest: dict) -> list[tuple[str, np.ndarray, float]]:
    """The active campaigns as the shadow filter matches them with the deployed model (`session`,
    its deploy `manifest`): (trigger, query embeddings (K, D) L2-normalized, cosine threshold)."""
    out = []
    for record in list_campaigns(store):
        if record["active"]:
            q, threshold, _ = calibrate(store, record, session, int(manifest["image_size"]))
            out.append((record["trigger"], q, threshold))
    return out


def calibrate(store: Store, record: dict, session, image_size: int) -> tuple[np.ndarray, float, dict]:
    """A campaign's query embeddings and threshold under this model, and how often the reference
    frames match: `{"in_slice": share of the slice's frames (outside the query), "outside": share of
    the others (about match_share)}`."""
    arrays = np.load(io.BytesIO(store.read_bytes(layout.campaign_query_key(record["name"]))))
    q = _embed(session, arrays["query"], image_size)
    sims = (_embed(session, arrays["reference"], image_size) @ q.T).max(axis=1)
    inside = arrays["reference_in_slice"].astype(bool)
    threshold = float(np.quantile(sims[~inside] if (~inside).any() else sims, 1.0 - record["match_share"]))
    rates = {"in_slice": float((sims[inside] >= threshold).mean()) if inside.any() else None,
             "outside": float((sims[~inside] >= threshold).mean()) if (~inside).any() else None}  # fmt: skip
    return q, threshold, rates


def match_rates(store: Store, settings: Settings, name: str) -> dict:
    """How often the reference frames match campaign `name` under the deployed model (`calibrate`)."""
    session, manifest = deploy.load_deployed(store, settings.mlflow.model_name, settings.train.device)
    return calibrate(store, load(store, name), session, int(manifest["image_size"]))[2]


def match(embeddings: np.ndarray, campaigns: list[tuple[str, np.ndarray, float]]) -> str | None:
    """The trigger of the first campaign one of these frames' embeddings (N, D) is close enough to."""
    if not campaigns:
        return None
    z = embeddings / (np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-12)
    for trigger, q, threshold in campaigns:
        if (z @ q.T).max() >= threshold:
            return trigger
    return None


def effect(store: Store, settings: Settings, name: str, brought: dict | None = None) -> dict:
    """What campaign `name` brought: clips and frames per batch, and its slice's score before and after.
    `brought` is `_brought(store)`, when the caller reads it once for several campaigns."""
    record = load(store, name)
    per_batch = (brought if brought is not None else _brought(store)).get(record["trigger"], {})
    after = _after(store, settings, record, set(per_batch))
    before = record["before"]["value"]
    return {
        "name": name, "slice": record["slice"], "active": record["active"],
        "clips": sum(v["clips"] for v in per_batch.values()), "frames": sum(v["frames"] for v in per_batch.values()),
        "batches": per_batch, "metric": record["before"]["metric"], "before": before,
        "before_model": record["before"]["model_version"], "after": after and after["value"],
        "after_model": after and after["model_version"], "after_n": after and after["n"],
        "delta": round(after["value"] - before, 4) if after and after["value"] is not None and before is not None else None,
    }  # fmt: skip


def _brought(store: Store) -> dict[str, dict[str, dict]]:
    """Campaign trigger -> batch -> {clips, frames} over every ingested batch (one read of each
    batch's trigger column)."""
    out: dict[str, dict[str, dict]] = {}
    for b in list_batches(store):
        key = layout.frames_key(b["batch_id"])
        if not store.exists(key):
            continue
        frames = store.read_parquet(key, columns=["clip_id", "trigger"])
        for trigger, clip in zip(frames.column("trigger").to_pylist(), frames.column("clip_id").to_pylist(), strict=True):
            if trigger.startswith(TRIGGER_PREFIX):
                seen = out.setdefault(trigger, {}).setdefault(b["batch_id"], {"clips": set(), "frames": 0})
                seen["clips"].add(clip)
                seen["frames"] += 1
    return {t: {b: {"clips": len(v["clips"]), "frames": v["frames"]} for b, v in per.items()} for t, per in out.items()}


def effects(store: Store, settings: Settings) -> list[dict]:
    """`effect` of every campaign, oldest first (nothing read when there is none)."""
    records = list_campaigns(store)
    brought = _brought(store) if records else {}
    return [effect(store, settings, c["name"], brought) for c in records]


def query_grid_png(store: Store, settings: Settings, name: str) -> bytes:
    """The campaign's query frames as a captioned PNG grid."""
    from flywheel.data.augment import sample_grid_png

    record = load(store, name)
    manifest = dataset.load_manifest(store, settings.dataset.name, record["dataset_version"])
    return sample_grid_png(originals(store, manifest, record["frame_ids"]), n=16, classes=settings.classes)


def _after(store: Store, settings: Settings, record: dict, batches: set[str]) -> dict | None:
    """The newest evaluation of a model trained on a dataset version holding the campaign's clips."""
    if not batches:
        return None
    name, metric = settings.dataset.name, record["before"]["metric"]
    evaluations = [store.read_json(o.key) for o in store.list(f"evaluations/{settings.mlflow.model_name}/")
                   if o.key.endswith(".json")]  # fmt: skip
    for ev in sorted(evaluations, key=lambda e: int(e["challenger_version"]), reverse=True):
        held = set(dataset.load_manifest(store, name, ev["dataset_version"])["batches"])
        if held & batches:
            s = ev["challenger"]["per_slice"].get(record["slice"], {})
            return {"model_version": ev["challenger_version"], "value": s.get(metric), "n": s.get("n")}
    return None


def originals(store: Store, manifest: dict, frame_ids: list[str] | None = None):
    """The version's original frames (no augmented copies): what a query needs, without the images
    unless `frame_ids` names the frames to read them for."""
    columns = ["frame_id", "label", *SLICE_COLUMNS, "augmentation"]
    if frame_ids is not None:
        columns += ["image", "height", "width"]
    filters = [("frame_id", "in", list(frame_ids))] if frame_ids is not None else None
    table = store.read_parquet([s["path"] for s in manifest["shards"]], columns=columns, filters=filters)
    return table.filter(pc.equal(table.column("augmentation"), ""))


def _decode(store: Store, manifest: dict, frame_ids: list[str], size: int) -> np.ndarray:
    """Model input (N, 3, size, size) of these frames of the version, in this order."""
    rows = originals(store, manifest, frame_ids)
    at = {f: i for i, f in enumerate(rows.column("frame_id").to_pylist())}
    pick = rows.take([at[f] for f in frame_ids])
    return decode_images(pick.column("image").to_pylist(), size, frame_ids=frame_ids,
                         heights=pick.column("height").to_pylist(), widths=pick.column("width").to_pylist())  # fmt: skip


def _embed(session, images: np.ndarray, size: int) -> np.ndarray:
    """L2-normalized embeddings (N, D) of model-input images, resized to the deployed model's input."""
    if images.shape[-1] != size:
        import cv2

        images = np.stack([cv2.resize(im.transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_AREA)
                           .transpose(2, 0, 1) for im in images])  # fmt: skip
    z = predict(session, images, embeddings=True).embeddings.astype(np.float64)
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)
