"""Benchmark: does the detector (flywheel/detection/) learn the simulator's boxes, and how fast?

The fleet simulator writes clips with 2-D boxes per frame; they go through the production ingest
(flywheel/ingest/: validation, frames Parquet with its `boxes` column), and the detector trains on
the frames' boxes at a few training-set sizes (prefixes of one pool) and is scored by COCO mAP
(pycocotools) on clips of another fleet seed, overall, per class and per condition. The condition mix
is the road world's drift end (fog, night and rain at 20 % each) so that every slice has frames.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from flywheel import ingest, layout, sim
from flywheel.config import Settings
from flywheel.detection import DetectorConfig, score_detector, to_input, train_detector
from flywheel.model_input import decode_images
from flywheel.store import open_store

MIX = {"day": 0.4, "night": 0.2, "rain": 0.2, "fog": 0.2}


def bench_settings(root: Path, render: tuple[int, int]) -> Settings:
    return Settings.model_validate({"store": {"root": str(root)},
                                    "sim": {"width": render[0], "height": render[1], "frames_per_clip": 8,
                                            "conditions_start": MIX, "conditions_end": MIX, "drift_clips": 1},
                                    "ingest": {"workers": 1}})  # fmt: skip


def fleet_frames(root: Path, settings: Settings, *, clips: int, seed: int, size: int) -> dict:
    """`clips` simulated clips through ingest: model input (N, 3, size, size), boxes per frame
    [(class index, x, y, w, h)] in input pixels, and each frame's condition."""
    store = open_store(str(root))
    sim.simulate(store, settings, clips=clips, seed=seed)
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10**6)
    ingest.commit_batch(store, plan)
    report = ingest.validate_batch(store, plan.batch_id, settings)
    if report["quarantined"]:
        raise ValueError(f"the simulator's clips were quarantined: {report['quarantined'][:3]}")
    ingest.write_frames(store, plan.batch_id, settings)
    t = store.read_parquet(layout.frames_key(plan.batch_id),
                           columns=["frame_id", "image", "height", "width", "boxes", "condition"])  # fmt: skip
    heights, widths = t.column("height").to_pylist(), t.column("width").to_pylist()
    images = decode_images(t.column("image").to_pylist(), size, heights=heights, widths=widths)
    index = {c: k for k, c in enumerate(settings.classes)}
    boxes = [to_input([(index[b["label"]], b["x"], b["y"], b["w"], b["h"]) for b in frame or []], w, h, size)
             for frame, h, w in zip(t.column("boxes").to_pylist(), heights, widths, strict=True)]  # fmt: skip
    return {"images": images, "boxes": boxes, "conditions": t.column("condition").to_pylist()}


def bench_detect(workdir: str | Path, *, pool_clips: tuple[int, ...] = (50, 200), test_clips: int = 60,
                 seeds: tuple[int, ...] = (0,), steps: int = 600, image_size: int = 96, width: int = 16,
                 render: tuple[int, int] = (96, 72), progress=None) -> dict:  # fmt: skip
    """Per seed and training-set size: mAP@[.5:.95] and mAP@.5 (overall, per class, per condition) on the
    held-out clips, the untrained model's as a floor, and the training time on this machine's CPU."""
    workdir = Path(workdir)
    settings = bench_settings(workdir / "settings", render)
    classes = list(settings.classes)
    cfg = DetectorConfig(num_classes=len(classes), image_size=image_size, width=width)
    rows = []
    for seed in seeds:
        pool = fleet_frames(workdir / f"pool-{seed}", settings, clips=max(pool_clips), seed=seed, size=image_size)
        test = fleet_frames(workdir / f"test-{seed}", settings, clips=test_clips, seed=10_000 + seed, size=image_size)
        per_clip = settings.sim.frames_per_clip
        torch.manual_seed(seed)
        floor = score_detector(_untrained(cfg), test["images"], test["boxes"], classes)
        for n in sorted(pool_clips):
            frames = n * per_clip
            t0 = time.perf_counter()
            model, losses = train_detector(pool["images"][:frames], pool["boxes"][:frames], cfg, steps=steps, seed=seed)
            seconds = time.perf_counter() - t0
            r = score_detector(model, test["images"], test["boxes"], classes, slices={"condition": test["conditions"]})
            row = {"seed": seed, "clips": n, "frames": frames, "boxes": sum(len(b) for b in pool["boxes"][:frames]),
                   "test_frames": len(test["images"]), "test_boxes": r["boxes"], "map": r["map"], "map50": r["map50"],
                   "untrained_map50": floor["map50"], "per_class": r["per_class"], "per_slice": r["per_slice"],
                   "final_loss": round(float(np.mean(losses[-50:])), 4), "train_s": round(seconds, 1)}  # fmt: skip
            rows.append(row)
            if progress:
                progress(f"seed {seed}, {n} clips ({frames} frames, {row['boxes']} boxes): mAP {r['map']}, "
                         f"mAP@.5 {r['map50']} (untrained {floor['map50']}); {seconds:.0f} s")  # fmt: skip
    return {"config": {"pool_clips": list(pool_clips), "test_clips": test_clips, "seeds": list(seeds), "steps": steps,
                       "image_size": image_size, "width": width, "render": list(render), "mix": MIX,
                       "torch_threads": torch.get_num_threads()}, "rows": rows}  # fmt: skip


def _untrained(cfg: DetectorConfig):
    from flywheel.detection import CenterNet

    return CenterNet(cfg).eval()


def markdown(result: dict) -> str:
    lines = ["| seed | clips (frames) | mAP@[.5:.95] | mAP@.5 | untrained mAP@.5 | per class mAP@.5 | per condition mAP@.5 | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in result["rows"]:
        cls = ", ".join(f"{k} {v['map50']}" for k, v in r["per_class"].items() if v["map50"] is not None)
        cond = ", ".join(f"{k.split('=')[1]} {v['map50']}" for k, v in r["per_slice"].items())
        lines.append(f"| {r['seed']} | {r['clips']} ({r['frames']}) | {r['map']} | {r['map50']} | {r['untrained_map50']} | "
                     f"{cls} | {cond} | {r['train_s']} |")  # fmt: skip
    return "\n".join(lines)
