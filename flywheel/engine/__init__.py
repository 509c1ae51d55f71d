"""The data engine: which clips the fleet uploads and which frames are worth a person's time.

    shadow     the deployed model flags clips the fleet should upload (`low_confidence` or `novel`)
    novelty    how unlike the champion's training data a clip looks, to the champion
    select     which frames a human labels within a budget; confidence measures
    campaigns  targeted collection: clips like a given few, asked of the fleet

The human queue itself, the auto labels and their quality are flywheel/labeling/.
"""
