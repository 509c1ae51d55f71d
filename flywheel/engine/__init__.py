"""The data engine: shadow-mode upload triggers, auto-labels, the Label Studio queue, active selection, label quality.

    shadow     the deployed model flags clips the fleet should upload (`low_confidence`)
    autolabel  champion auto-labels, embeddings for selection, the ground-truth wall
    queue      Label Studio import tasks out, exports back; a simulated annotator
    select     which frames a human labels within a budget
    quality    auto-label accuracy, label errors by confident learning
"""

from flywheel.engine.autolabel import (
    champion_autolabeler,
    decode_images,
    embed_and_predict,
    hide_ground_truth,
)
from flywheel.engine.quality import auto_label_accuracy, find_label_errors
from flywheel.engine.queue import (
    label_config,
    queued_ground_truth,
    read_queue,
    simulate_annotator,
    write_queue,
)
from flywheel.engine.select import select_for_labeling
from flywheel.engine.shadow import DailyUploadBudget, confidence, fleet_filter, shadow_filter

__all__ = [
    "DailyUploadBudget", "auto_label_accuracy", "champion_autolabeler", "confidence", "decode_images",
    "embed_and_predict", "find_label_errors", "fleet_filter", "hide_ground_truth", "label_config",
    "queued_ground_truth", "read_queue", "select_for_labeling", "shadow_filter", "simulate_annotator", "write_queue",
]  # fmt: skip
