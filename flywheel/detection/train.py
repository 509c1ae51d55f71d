"""Training and scoring of the CenterNet detector (flywheel/detection/model.py) on frames with boxes.

Frames come as uint8 arrays (N, 3, S, S) already at the model's input side, boxes per frame as
[(class index, x, y, w, h)] in those pixels (`to_input` scales a frame's boxes with its resize).
Augmentation: `augment.box_pipeline` (flip, scale, shift and the project's photometric transforms,
the boxes moved with the pixels), a fresh draw for every frame of every step. AdamW with a one-cycle
schedule, a fixed number of steps; deterministic for a seed on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from flywheel.detection.augment import augment, box_pipeline
from flywheel.detection.metrics import coco_map
from flywheel.detection.model import CenterNet, DetectorConfig, collate, decode, encode, loss
from flywheel.training import ddp
from flywheel.training.device import autocast


def to_input(boxes: Sequence[tuple], width: int, height: int, side: int) -> list[tuple]:
    """A frame's boxes [(class, x, y, w, h)] in pixels of a width x height frame, in pixels of its resize to side x side."""
    sx, sy = side / width, side / height
    return [(c, x * sx, y * sy, w * sx, h * sy) for c, x, y, w, h in boxes]


def train_detector(images: np.ndarray, boxes: Sequence[Sequence[tuple]], cfg: DetectorConfig, *, steps: int = 600,
                   batch_size: int = 32, lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
                   augmentation: bool = True, progress=None, device: str | torch.device = "cpu",
                   distributed: bool = False) -> tuple[CenterNet, list[float]]:  # fmt: skip
    """A detector trained for `steps` steps on `images` (N, 3, S, S) uint8 with their `boxes`; the model (in
    eval mode, on the CPU) and the loss of every step. `augmentation`: `augment.box_pipeline` on every frame
    drawn. `progress(step, loss)` is called every 50 steps (on rank 0). On a CUDA `device` the steps run in
    bf16 autocast. `distributed`: under torchrun, DDP over the ranks (NCCL on GPUs, gloo on CPUs); each rank
    draws its own `batch_size / ranks` frames per step and the gradients are averaged, so a step sees
    `batch_size` frames whatever the number of ranks."""
    if images.ndim != 4 or images.shape[1:] != (3, cfg.image_size, cfg.image_size):
        raise ValueError(f"images must be (N, 3, {cfg.image_size}, {cfg.image_size}), got {images.shape}")
    if len(images) != len(boxes) or not len(images):
        raise ValueError(f"{len(images)} images and {len(boxes)} box lists: need as many, at least one")
    device = torch.device(device)
    with ddp.joined(device) if distributed else contextlib.nullcontext(ddp.Dist()) as group:
        torch.manual_seed(seed)  # the same initial weights on every rank
        own = seed if not group.enabled else seed * 1000 + group.rank  # each rank its own frames and draws
        rng = np.random.default_rng(own)
        model = CenterNet(cfg).to(device).train()
        net = model
        if group.enabled:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
        pipeline = box_pipeline(seed=own) if augmentation else None
        plain = None if augmentation else [encode(b, cfg) for b in boxes]
        per_rank = max(1, batch_size // group.world_size)
        losses = []
        for step in range(steps):
            idx = rng.choice(len(images), size=min(per_rank, len(images)), replace=False)
            if pipeline is None:
                x, targets = torch.from_numpy(images[idx]), collate([plain[i] for i in idx])
            else:
                drawn = [augment(pipeline, images[i], boxes[i]) for i in idx]
                x = torch.from_numpy(np.stack([d[0] for d in drawn]))
                targets = collate([encode(d[1], cfg) for d in drawn])
            x, targets = x.to(device, non_blocking=True), {k: v.to(device, non_blocking=True) for k, v in targets.items()}
            with autocast(device):  # bf16 on a GPU that has it; the loss casts to float32
                total, _ = loss(net(x), targets)
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            losses.append(float(ddp.all_reduce(total.detach().clone(), group)) / group.world_size)
            if progress is not None and group.is_main and (step + 1) % 50 == 0:
                progress(step + 1, float(np.mean(losses[-50:])))
    return model.cpu().eval(), losses


@torch.no_grad()
def detect(model: CenterNet, images: np.ndarray, *, batch_size: int = 64, k: int = 50) -> list[list[tuple]]:
    """Per image: [(class, score, x, y, w, h)] in input pixels."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out += decode(model(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))), k=k)
    return out


def score_detector(model: CenterNet, images: np.ndarray, boxes: Sequence[Sequence[tuple]], classes: Sequence[str],
                   *, slices: dict[str, Sequence[str]] | None = None) -> dict:  # fmt: skip
    """COCO mAP of the model's detections on `images` against `boxes` (metrics.coco_map)."""
    return coco_map(boxes, detect(model, images), classes, slices=slices)
