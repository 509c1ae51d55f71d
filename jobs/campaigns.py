"""The mining job: start a campaign (one partition of `campaigns`) or report what it brought."""

import dagster as dg

from assets.campaigns import campaign
from resources.partitions import mining_campaigns

mine = dg.define_asset_job(
    "mining_campaign",
    selection=dg.AssetSelection.assets(campaign),
    partitions_def=mining_campaigns,
    description="Find more like this: start a mining campaign the fleet's shadow mode reads, or report its effect.",
)
