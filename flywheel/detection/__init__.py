"""The detection task's model, training and metrics: an anchor-free detector (CenterNet) in plain torch,
scored by COCO mAP (pycocotools). Boxes are (class index, x, y, w, h) in pixels, x/y the top-left corner."""

from flywheel.detection.metrics import coco_map
from flywheel.detection.model import (
           CenterNet,
           DetectorConfig,
           decode,
           encode,
           load_detector,
           save_detector,
)
from flywheel.detection.train import detect, score_detector, to_input, train_detector

__all__ = ["CenterNet", "DetectorConfig", "coco_map", "decode", "detect", "encode", "load_detector", "save_detector",
           "score_detector", "to_input", "train_detector"]
