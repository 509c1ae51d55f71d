"""Labeling: each frame's label, and the people who give the ones no one else can.

    labels              each frame's label: human > ground truth > the champion's auto label; the ground-truth wall
    queue               which frames of a batch go to people; Label Studio tasks out, exports back
    quality             how right the auto labels are; given labels that look wrong (confident learning)
    labelstudio         Label Studio's formats: import tasks, label config, JSON exports
    labelstudio_sync    the queue on a Label Studio server: tasks pushed, answers pulled, stale image URLs renewed
    labelstudio_server  a local Label Studio for `flywheel ui` (its own environment, admin, token)

Which frames are worth a person's time is the data engine's choice (flywheel/engine/select.py); the
simulated labeling team of the demo is flywheel/sim/annotator.py.
"""
