"""Mining campaigns: one dynamic partition per campaign; materializing it starts the campaign (the
first time) and reports what it brought so far."""

import dagster as dg

from assets.ingest import STORE_RETRY
from assets.ui import png_md, table_md
from flywheel import lazy
from resources import SettingsResource, StoreResource
from resources.partitions import mining_campaigns

campaigns = lazy.module("flywheel.engine.campaigns")  # torch and onnxruntime, when a step uses it


class CampaignConfig(dg.Config):
    """How a new campaign picks its frames; all unset: the deployed champion's worst slice."""

    slice: str | None = None  # e.g. "condition=fog"
    frame_ids: list[str] = []  # or frames of the latest dataset version, by frame_id
    max_frames: int = 32  # query frames at most
    match_share: float = 0.05  # of ordinary frames that would match: sets the similarity threshold


@dg.asset(partitions_def=mining_campaigns, group_name="engine", retry_policy=STORE_RETRY, kinds={"onnx"})
def campaign(context: dg.AssetExecutionContext, config: CampaignConfig, settings: SettingsResource,
             store: StoreResource) -> dg.MaterializeResult:  # fmt: skip
    """Find more like this: the fleet's shadow mode uploads clips that look like the campaign's
    frames (trigger `campaign:<name>`). Materialize again to see its effect after an iteration."""
    s, st, name = settings.load(), store.open(), context.partition_key
    record = campaigns.create(st, s, name, slice=config.slice, frame_ids=config.frame_ids or None,
                              max_frames=config.max_frames, match_share=config.match_share)  # fmt: skip
    return dg.MaterializeResult(metadata=_campaign_metadata(st, s, name, record))


def _campaign_metadata(st, s, name: str, record: dict) -> dict:
    """What the UI shows of a campaign: its query, the match rates now, the clips it brought and its effect."""
    out, now = campaigns.effect(st, s, name), campaigns.match_rates(st, s, name)
    before, after = out["before"], out["after"]
    return {
        "slice": record["slice"],
        "source": record["source"],
        "active": record["active"],
        "query_frames": len(record["frame_ids"]),
        "trigger": record["trigger"],
        "match rate under the deployed model (slice / other frames)": " / ".join(
            "-" if r is None else f"{r:.2f}" for r in (now["in_slice"], now["outside"])
        ),
        "clips_brought": out["clips"],
        "frames_brought": out["frames"],
        f"{out['metric']} on the slice before (v{out['before_model']})": before,
        f"{out['metric']} on the slice after": after,
        "after (model)": f"v{out['after_model']} ({out['after_n']} frames)" if after is not None else "not trained on its clips yet",
        "delta": out["delta"],
        "per batch": table_md([{"batch": b, **v} for b, v in out["batches"].items()]),
        "query": png_md(campaigns.query_grid_png(st, s, name), "query frames"),
    }
