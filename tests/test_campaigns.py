"""Mining campaigns: a query from a slice or named frames, clips like them from the fleet, the effect."""

import json
from collections import Counter

import dagster as dg
import numpy as np
import pytest
from click.testing import CliRunner

from flywheel import ingest, layout, stages
from flywheel.cli import Ctx, main, run_iteration
from flywheel.data import dataset
from flywheel.deployment import deploy
from flywheel.engine import campaigns
from flywheel.engine.shadow import fleet_filter, shadow_filter
from flywheel.sim import simulate

# a gate that passes every challenger (no gain needed, no slice judged): each iteration deploys, so the
# campaign outlives the champion it started with
MIX = {"day": 0.6, "night": 0.15, "rain": 0.1, "fog": 0.15}
SMALL = {"sim.frames_per_clip": 4, "image_size": 32, "train.epochs": 3, "train.width": 8, "train.depth": 1,
         "train.batch_size": 32, "dataset.golden_size": 10, "dataset.split": {"train": 0.5, "val": 0.1, "test": 0.4},
         "sim.conditions_start": MIX, "sim.conditions_end": MIX, "gate.floor": 0.0, "gate.min_slice_frames": 1000,
         "gate.margin": -1.0, "gate.critical_slices": [], "deploy.int8": False,
         "tune.baseline_epochs": 0}  # fmt: skip


@pytest.mark.slow
def test_a_campaign_brings_clips_like_its_slice_and_reports_its_effect(flywheel_home, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(flywheel_home / "dagster"))
    (flywheel_home / "dagster").mkdir()
    obj = Ctx(None, SMALL)
    store, settings = obj.store(), obj.settings
    cli = CliRunner()
    none_yet = cli.invoke(main, ["campaign", "start", "early", "--slice", "condition=fog"])
    assert none_yet.exit_code != 0 and "deploy one first" in none_yet.output  # nothing to embed frames with yet

    simulate(store, settings, clips=40, seed=1)
    run_iteration(obj)  # v1 deployed
    bad = cli.invoke(main, ["campaign", "start", "odd", "--slice", "weather=fog"])
    assert bad.exit_code != 0 and "weather=fog" in bad.output
    started = cli.invoke(main, ["campaign", "start", "fog-hunt", "--slice", "condition=fog", "--max-frames", "16"])
    assert started.exit_code == 0, started.output
    assert "fog-hunt: condition=fog active; 0 clips brought" in started.output
    record = campaigns.load(store, "fog-hunt")
    v1 = store.read_json(layout.evaluation_key(settings.mlflow.model_name, "1"))
    assert record["before"]["value"] == v1["challenger"]["per_slice"]["condition=fog"][settings.gate.metric]
    rows = campaigns.originals(store, dataset.load_manifest(store, settings.dataset.name))
    fog = set(np.asarray(rows.column("frame_id"))[np.asarray(rows.column("condition")) == "fog"])
    assert len(record["frame_ids"]) == 16 and set(record["frame_ids"]) <= fog  # the query: fog frames

    # the fleet's shadow mode now uploads clips like the query (the engine is off: no other shadow trigger)
    simulate(store, settings, clips=30, seed=1, upload_filter=fleet_filter(store, settings))
    run_iteration(obj)  # v2: trained on a version holding the campaign's clips
    frames = store.read_parquet([layout.frames_key(b) for b in _batches(store)], columns=["clip_id", "trigger", "condition"])
    mine = [c for c, t in zip(frames.column("condition").to_pylist(), frames.column("trigger").to_pylist(), strict=True)
            if t == "campaign:fog-hunt"]  # fmt: skip
    clips = len(mine) // settings.sim.frames_per_clip
    assert clips >= 3
    # the campaign's clips are what it looks for: at least twice the fog share the fleet records
    assert mine.count("fog") / len(mine) >= 2 * MIX["fog"] / sum(MIX.values())
    out = json.loads(cli.invoke(main, ["campaign", "list", "--json"]).output)
    assert [(e["name"], e["clips"], e["after_model"]) for e in out] == [("fog-hunt", clips, "2")]
    v2 = store.read_json(layout.evaluation_key(settings.mlflow.model_name, "2"))
    assert out[0]["after"] == v2["challenger"]["per_slice"]["condition=fog"][settings.gate.metric]
    # in the UI: the campaign's partition and the evaluation that judged a model trained on its clips
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions("campaigns") == ["fog-hunt"]
        mat = instance.get_latest_materialization_event(dg.AssetKey("campaign")).asset_materialization
        assert mat.partition == "fog-hunt" and mat.metadata["query_frames"].value == 16
        evaluation = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).asset_materialization
        assert "fog-hunt" in evaluation.metadata["mining campaigns (clips brought, slice score before and after)"].value
    assert cli.invoke(main, ["campaign", "stop", "fog-hunt"]).exit_code == 0
    assert fleet_filter(store, settings) is None  # engine off and no campaign running: random uploads


def _batches(store):
    from flywheel.ingest import list_batches

    return [b["batch_id"] for b in list_batches(store)]


def test_named_frames_and_bad_input(flywheel_home, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(flywheel_home / "dagster"))
    (flywheel_home / "dagster").mkdir()
    obj = Ctx(None, SMALL)
    store, settings = obj.store(), obj.settings
    simulate(store, settings, clips=20, seed=2)
    run_iteration(obj)
    rows = campaigns.originals(store, dataset.load_manifest(store, settings.dataset.name))
    fids, conds = rows.column("frame_id").to_pylist(), rows.column("condition").to_pylist()
    night = [f for f, c in zip(fids, conds, strict=True) if c == "night"][:3]
    night += [f for f, c in zip(fids, conds, strict=True) if c != "night"][:1]  # most, not all, are night
    with pytest.raises(ValueError, match="not in perception v1: \\['nope/front/0'\\]"):
        campaigns.create(store, settings, "x", frame_ids=["nope/front/0"])
    with pytest.raises(ValueError, match="a slice or for named frames, not both"):
        campaigns.create(store, settings, "x", slice="condition=fog", frame_ids=night)
    with pytest.raises(ValueError, match="campaign name"):
        campaigns.create(store, settings, "no spaces please")
    record = campaigns.create(store, settings, "night-like", frame_ids=night)
    assert record["source"] == "frames" and record["slice"] == "condition=night" and record["frame_ids"] == night
    assert campaigns.create(store, settings, "night-like", frame_ids=night[:1]) == record  # created once
    worst = campaigns.create(store, settings, "worst")  # neither: the champion's worst slice
    name, scores = campaigns.worst_slice(store, settings)
    assert worst["slice"] == name and worst["before"]["value"] == scores[settings.gate.metric]
    # the filter: a query frame itself matches its campaign; the threshold leaves most other frames out
    session, manifest = deploy.load_deployed(store, settings.mlflow.model_name)
    mining = campaigns.queries(store, session, manifest)
    assert [t for t, _, _ in mining] == ["campaign:night-like", "campaign:worst"]
    rates = campaigns.match_rates(store, settings, "night-like")
    assert rates["outside"] <= 0.1
    arrays = np.load(__import__("io").BytesIO(store.read_bytes(layout.campaign_query_key("night-like"))))
    query_frames = arrays["query"][:1].transpose(0, 2, 3, 1)  # (1, S, S, 3) as a camera gives them
    upload = shadow_filter(session, manifest, threshold=None, campaigns=mining[:1])
    assert upload(query_frames, {"recorded_at": "2026-01-01T00:00:00"}) == "campaign:night-like"


def test_scarce_conditions_are_mined_without_anyone_naming_them(flywheel_home, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(flywheel_home / "dagster"))
    (flywheel_home / "dagster").mkdir()
    share = 0.2
    obj = Ctx(None, {**SMALL, "engine.scarce_share": share, "engine.scarce_match_share": 0.05})
    store, settings = obj.store(), obj.settings

    def expected(version: int) -> set[str]:  # the rarest condition, when it is below the share
        rows = campaigns.originals(store, dataset.load_manifest(store, settings.dataset.name, version))
        share_of = Counter(rows.column("condition").to_pylist())
        rarest = min(sorted(share_of), key=share_of.__getitem__)
        assert share_of[rarest] < max(share_of.values())  # the test means something: one condition is rarer
        return {f"scarce-condition-{rarest}-v{version}"} if share_of[rarest] / share_of.total() < share else set()

    simulate(store, settings, clips=40, seed=1)
    run_iteration(obj)  # v1 deployed; the deployed step mines for what is scarce in v1
    first = expected(1)
    assert len(first) == 1 and "scarce-condition-day-v1" not in first
    records = {c["name"]: c for c in campaigns.list_campaigns(store)}
    assert set(records) == first and all(r["active"] and r["match_share"] == 0.05 and r["source"] == "scarce slice"
                                         for r in records.values())  # fmt: skip
    rows = campaigns.originals(store, dataset.load_manifest(store, settings.dataset.name, 1))
    cond = dict(zip(rows.column("frame_id").to_pylist(), rows.column("condition").to_pylist(), strict=True))
    for r in records.values():  # each query holds frames of its own condition only
        assert {cond[f] for f in r["frame_ids"]} == {r["slice"].removeprefix("condition=")}

    with dg.DagsterInstance.get() as instance:  # a partition of the campaign asset, as in the UI
        assert set(instance.get_dynamic_partitions("campaigns")) == first
        mat = instance.get_latest_materialization_event(dg.AssetKey("deployed")).asset_materialization
        assert mat.metadata["scarce-slice campaigns started"].value == ", ".join(first)

    # v2 (no training needed: the v1 champion embeds the queries): the campaign is renewed with v2's frames
    # (or moves to another slice), v1's stops
    simulate(store, settings, clips=30, seed=2, upload_filter=fleet_filter(store, settings))
    batch = ingest.plan_batch(store, min_clips=1, max_clips=10**6)
    ingest.commit_batch(store, batch)
    ingest.validate_batch(store, batch.batch_id, settings)
    ingest.write_frames(store, batch.batch_id, settings)
    stages.label_batch(store, settings, batch.batch_id)
    stages.augment_batch(store, settings, batch.batch_id)
    assert stages.build_dataset_version(store, settings)[0]["version"] == 2
    mined = campaigns.mine_scarce(store, settings)
    second = expected(2)
    assert second and mined["started"] == sorted(second) and mined["stopped"] == sorted(first)
    records = {c["name"]: c for c in campaigns.list_campaigns(store)}
    assert {n for n, r in records.items() if r["active"]} == second
    assert set(records) == first | second and not any(records[n]["active"] for n in first)
    assert campaigns.mine_scarce(store, settings)["started"] == []  # once per version
    # a campaign people started is theirs: the engine neither counts nor stops it
    people = campaigns.create(store, settings, "scarce-by-hand", slice="condition=day")
    assert people["source"] == "slice" and campaigns.mine_scarce(store, settings)["stopped"] == []
    assert campaigns.load(store, "scarce-by-hand")["active"]

    off = settings.model_copy(update={"engine": settings.engine.model_copy(update={"scarce_share": None})})
    assert campaigns.mine_scarce(store, off) == {"started": [], "stopped": [], "active": [], "shares": {}}
    with pytest.raises(ValueError, match="not 'trigger'"):
        campaigns.mine_scarce(store, settings, column="trigger")
