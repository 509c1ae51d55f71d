"""Evaluation: what a model is judged on, its scores, and whether it may be deployed.

    evalset    the golden set, the evaluation frames, the fixed held-out set
    evaluate   metrics: per class, per slice, calibration, robustness
    saliency   what a model looks at: Grad-CAM of the gated slices' worst frames
    gate       the promotion decision, a pure function
    approvals  who may deploy a challenger: the gate's recorded decision, approvals, forces
"""
