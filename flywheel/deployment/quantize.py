"""int8 deployment: an int8 ONNX graph built beside the fp32 one, checked against it, and timed.

onnxruntime's static quantization in the QDQ format, per channel, with activation ranges
calibrated on train frames (MinMax). The check compares both graphs on the same test frames:
overall accuracy may drop by at most `deploy.int8_max_drop`, and no slice with enough frames to
be gated (`gate.min_slice_frames`) may drop by more than `gate.slice_tolerance`. Latency is the
median of timed onnxruntime runs on the CPU, one thread, at batch 1 and 32.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from flywheel.config import Settings
from flywheel.data.reader import ShardReader
from flywheel.deployment import deploy
from flywheel.model_input import INPUT_NAME
from flywheel.predict import OUTPUT_NAME, predict
from flywheel.store import Store

CALIBRATION_BATCH = 32
LATENCY_BATCHES = (1, 32)


class _Frames(CalibrationDataReader):
    """The calibration frames, uint8 (N, 3, S, S), in batches as onnxruntime's calibrator reads them."""

    def __init__(self, images: np.ndarray):
        self.batches: Iterator[np.ndarray] = iter(
            [images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
    """The int8 (QDQ, per-channel weights) graph of an fp32 one, calibrated on uint8 frames (N, 3, S, S)."""
    if calibration.ndim != 4 or calibration.dtype != np.uint8 or len(calibration) == 0:
        raise ValueError(f"calibration must be uint8 (N>0, 3, S, S), got {calibration.dtype} {calibration.shape}")
    with tempfile.TemporaryDirectory() as tmp:
        raw, src, dst = (Path(tmp) / f for f in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        raw.write_bytes(onnx_bytes)
        quant_pre_process(str(raw), str(src))  # shape inference and graph optimization, as quantization wants
        quantize_static(str(src), str(dst), _Frames(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        return dst.read_bytes()


def latency_ms(onnx_bytes: bytes, image_size: int, *, batches: Sequence[int] = LATENCY_BATCHES,
               runs: int = 20, outputs: Sequence[str] = (OUTPUT_NAME,)) -> dict[str, float]:  # fmt: skip
    """Median milliseconds of one onnxruntime run on the CPU (one thread) per batch size: {"b1": ..};
    `outputs`: what the run computes (a classifier's logits; a detector's three heads)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        x = rng.integers(0, 256, (b, 3, image_size, image_size), np.uint8)
        session.run(list(outputs), {INPUT_NAME: x})  # warm up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(list(outputs), {INPUT_NAME: x})
            times.append((time.perf_counter() - t0) * 1000)
        out[f"b{b}"] = round(float(np.median(times)), 3)
    return out


def check_int8(fp32_preds: np.ndarray, int8_preds: np.ndarray, labels: np.ndarray,
               slices: Mapping[str, Sequence[str]], *, max_drop: float, slice_tolerance: float,
               min_slice_frames: int) -> dict:  # fmt: skip
    """Whether the int8 model's predictions (N,) are close enough to fp32's on the same frames.

    Returns {passed, reason, accuracy_fp32, accuracy_int8, drop, agreement, slices: [...]}; a slice
    (`column=value` of `slices`) with fewer than `min_slice_frames` frames is listed, not judged.
    """
    if not len(labels) == len(fp32_preds) == len(int8_preds) or len(labels) == 0:
        raise ValueError("check_int8 needs the same number (> 0) of labels and predictions of each model")
    ok_fp32, ok_int8 = fp32_preds == labels, int8_preds == labels
    acc_fp32, acc_int8 = float(ok_fp32.mean()), float(ok_int8.mean())
    rows, worse = [], []
    for column, values in sorted(slices.items()):
        values = np.asarray([str(v) for v in values])
        for value in np.unique(values).tolist():
            idx = values == value
            n, drop = int(idx.sum()), float(ok_fp32[idx].mean() - ok_int8[idx].mean())
            judged = n >= min_slice_frames
            rows.append({"slice": f"{column}={value}", "n": n, "drop": round(drop, 4), "judged": judged})
            if judged and drop > slice_tolerance:
                worse.append(f"{column}={value} loses {drop:.3f} > {slice_tolerance:.3f}")
    drop = acc_fp32 - acc_int8
    problems = ([f"accuracy drops {drop:.4f} > {max_drop:.4f}"] if drop > max_drop else []) + worse
    reason = "; ".join(problems) if problems else (
        f"accuracy {acc_int8:.4f} vs fp32 {acc_fp32:.4f} (drop {drop:+.4f} <= {max_drop:.4f}), no slice worse "
        f"than {slice_tolerance:.3f}")  # fmt: skip
    return {"passed": not problems, "reason": reason, "accuracy_fp32": round(acc_fp32, 4),
            "accuracy_int8": round(acc_int8, 4), "drop": round(drop, 4),
            "agreement": round(float((fp32_preds == int8_preds).mean()), 4), "frames": len(labels),
            "slices": rows}  # fmt: skip


def int8_for_deploy(store: Store, settings: Settings, manifest: dict, onnx_bytes: bytes, images: np.ndarray,
          labels: np.ndarray, meta: dict) -> dict | None:  # fmt: skip
    """The int8 graph of `onnx_bytes` (flywheel/deployment/quantize.py), checked against it on the evaluation frames
    (`images`, `labels`, `meta`: the test split and golden set without auto labels, as the gate) and timed; None when the version has no train frames to calibrate on."""
    d, size = settings.deploy, settings.image_size
    reader = ShardReader(store, manifest, split="train", image_size=size, train_aug=False)
    calibration = [s["image"].numpy() for s in itertools.islice(reader, d.calibration_frames)]
    if not calibration or not len(labels):
        return None
    int8_bytes = quantize_int8(onnx_bytes, np.stack(calibration))
    graphs = {"fp32": onnx_bytes, "int8": int8_bytes}
    preds = {k: predict(deploy.session(g), images).probs.argmax(1) for k, g in graphs.items()}  # (N,) each
    check = check_int8(preds["fp32"], preds["int8"], labels, {k: meta[k] for k in ("trigger", "condition", "camera")},
                                max_drop=d.int8_max_drop, slice_tolerance=settings.gate.slice_tolerance,
                                min_slice_frames=settings.gate.min_slice_frames)  # fmt: skip
    return {"bytes": int8_bytes, "check": check,
            "latency_ms": {k: latency_ms(g, size) for k, g in graphs.items()}}  # fmt: skip
