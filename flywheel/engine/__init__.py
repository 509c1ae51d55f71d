"""The data engine: shadow-mode upload triggers, the human queue, active selection, label quality.

    shadow     the deployed model flags clips the fleet should upload (`low_confidence`)
    queue      which frames of a batch go to people; Label Studio tasks out, exports back
    select     which frames a human labels within a budget; confidence measures
    quality    auto-label accuracy, label errors by confident learning

Auto-labels themselves are `labels.build_labels(..., auto_probs=...)`: the champion's scores,
computed once per batch by the labels stage (flywheel/loop.py).
"""
