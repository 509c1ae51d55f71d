"""Benchmark: the deployed model in fp32 and int8 (flywheel/deployment/quantize.py): size, latency at batch 1
and 32, accuracy and per-condition deltas on held-out frames, at the default width and at 32.

Each width trains with the recipe (benchmarks/recipe.py's `add_batch` + `train_recipe`: the
pipeline's own stages) on `frames` frames of the built-in simulator, exports ONNX, builds the int8
graph calibrated on `deploy.calibration_frames` train frames as `stages.deploy_challenger` does, and
scores both graphs on the same held-out clips.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.datasets import make_frames
from benchmarks.recipe import add_batch, machine, recipe_settings, train_recipe
from flywheel.data.reader import load_arrays
from flywheel.deployment import deploy, quantize
from flywheel.model import load_weights
from flywheel.model_input import decode_images
from flywheel.predict import predict
from flywheel.store import store_for


def bench_int8(workdir: str | Path | None = None, *, frames: int = 2000, heldout: int = 1000,
               widths: tuple[int, ...] = (16, 32), overrides: dict | None = None) -> dict:  # fmt: skip
    rows = []
    held = make_frames("sim", frames=heldout, seed=0, heldout=True)
    pool = make_frames("sim", frames=frames, seed=0)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for width in widths:
            settings = recipe_settings("sim", Path(tmp) / f"w{width}", overrides={**(overrides or {}), "train.width": width})
            store, size = store_for(settings), settings.image_size
            manifest, _ = add_batch(store, settings, pool, "b0001")
            model, _ = load_weights(train_recipe(store, settings, manifest)[0].final.weights)
            fp32 = deploy.export_onnx(model, image_size=size)
            calibration, _, _ = load_arrays(store, manifest, split="train", image_size=size)
            t0 = time.perf_counter()
            int8 = quantize.quantize_int8(fp32, calibration[: settings.deploy.calibration_frames])
            build_s = time.perf_counter() - t0
            x = decode_images(held.images, size, heights=[held.height] * len(held), widths=[held.width] * len(held))
            y = np.array(held.labels)
            preds = {k: predict(deploy.session(g), x).probs.argmax(1) for k, g in (("fp32", fp32), ("int8", int8))}
            check = quantize.check_int8(preds["fp32"], preds["int8"], y, {"condition": held.conditions},
                                        max_drop=settings.deploy.int8_max_drop,
                                        slice_tolerance=settings.gate.slice_tolerance,
                                        min_slice_frames=settings.gate.min_slice_frames)  # fmt: skip
            rows.append({
                "width": width, "train_frames": manifest["counts"]["split"]["train"], "heldout_frames": len(y),
                "bytes": {"fp32": len(fp32), "int8": len(int8)}, "int8_build_s": round(build_s, 2),
                "latency_ms": {k: quantize.latency_ms(g, size) for k, g in (("fp32", fp32), ("int8", int8))},
                "check": check,
            })  # fmt: skip
    return {"rows": rows, "machine": machine(), "markdown": markdown(rows)}


def markdown(rows: list[dict]) -> str:
    lines = ["| width | size fp32 / int8 (KB) | batch 1 ms fp32 / int8 | batch 32 ms fp32 / int8 "
             "| accuracy fp32 / int8 | agreement | per-condition drop (fp32 − int8) | check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        c, lat = r["check"], r["latency_ms"]
        per = ", ".join(f"{s['slice'].split('=')[1]} {s['drop']:+.3f}" for s in c["slices"])
        lines.append(
            f"| {r['width']} | {r['bytes']['fp32'] / 1024:.0f} / {r['bytes']['int8'] / 1024:.0f} "
            f"| {lat['fp32']['b1']:.2f} / {lat['int8']['b1']:.2f} | {lat['fp32']['b32']:.2f} / {lat['int8']['b32']:.2f} "
            f"| {c['accuracy_fp32']:.3f} / {c['accuracy_int8']:.3f} | {c['agreement']:.3f} | {per} "
            f"| {'passed' if c['passed'] else 'failed: ' + c['reason']} |"
        )  # fmt: skip
    return "\n".join(lines)
