"""An anchor-free detector in plain torch: CenterNet ("Objects as Points", Zhou et al. 2019) on the
project's backbone (flywheel/model.py's stem and residual stages).

An object is the peak of its class's heatmap at its box centre, with the box's width and height and
the centre's sub-cell offset regressed at that cell. The heads read a stride-4 map: the backbone's
stride-8 features upsampled and added to its stride-4 ones (one lateral step of a feature pyramid).
Training targets are Gaussian peaks whose radius follows the box size (CenterNet's rule for a
minimum IoU of 0.7); the loss is CenterNet's: penalty-reduced focal loss on the heatmaps, L1 on size
(weight 0.1) and offset at the centres. Decoding keeps the local maxima of the heatmaps (a 3x3 max
pool, no NMS) and their top `k` scores.

Boxes are (class index, x, y, w, h) in pixels of the model's square input (x, y: the top-left corner).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flywheel.model import ModelConfig, build_model

STRIDE = 4  # input pixels per cell of the heads' map
SIZE_WEIGHT = 0.1  # CenterNet's weight of the size loss
MIN_OVERLAP = 0.7  # a peak this far from the centre still gives a box of IoU >= this with the true one


@dataclass(frozen=True)
class DetectorConfig:
    num_classes: int
    image_size: int = 96  # the square input side; a multiple of 8
    width: int = 16  # the backbone's first stage; doubled at each later stage (three stages)
    depth: int = 1  # residual blocks per stage
    head_channels: int = 64

    def __post_init__(self):
        if self.image_size % 8 or self.image_size < 16:
            raise ValueError(f"a detector's image_size must be a multiple of 8, at least 16; got {self.image_size}")
        if self.num_classes < 1:
            raise ValueError(f"a detector needs at least one class, got {self.num_classes}")

    @property
    def side(self) -> int:
        """The side of the heads' map."""
        return self.image_size // STRIDE


class CenterNet(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        trunk = build_model(ModelConfig(num_classes=1, image_size=cfg.image_size, width=cfg.width, depth=cfg.depth,
                                        stages=3, stem_stride=2, head="pool"))  # fmt: skip
        self.register_buffer("mean", trunk.mean.clone(), persistent=False)
        self.register_buffer("std", trunk.std.clone(), persistent=False)
        self.stem = trunk.stem
        cut = 2 * cfg.depth  # the blocks of the first two stages end at stride 4
        self.early, self.late = trunk.stages[:cut], trunk.stages[cut:]
        c4, c8, h = cfg.width * 2, cfg.width * 4, cfg.head_channels
        self.lateral = nn.Conv2d(c4, h, 1)
        self.top = nn.Conv2d(c8, h, 1)
        self.fuse = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, bias=False), nn.BatchNorm2d(h), nn.ReLU())

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(h, h, 3, padding=1), nn.ReLU(), nn.Conv2d(h, out, 1))

        self.heatmap, self.size, self.offset = head(cfg.num_classes), head(2), head(2)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - 0.1) / 0.1))  # CenterNet's prior: few peaks at first

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 or float images (B, 3, S, S) -> heatmap logits (B, C, S/4, S/4), size and offset (B, 2, S/4, S/4)."""
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        s4 = self.early(self.stem(x))
        s8 = self.late(s4)
        f = self.fuse(self.lateral(s4) + F.interpolate(self.top(s8), size=s4.shape[-2:], mode="nearest"))
        return self.heatmap(f), self.size(f), self.offset(f)


def _radius(h: float, w: float) -> float:
    """CenterNet's Gaussian radius (in cells) for a box of h x w cells: the three cases of a corner shifted
    so that the IoU with the true box stays at MIN_OVERLAP."""
    a1, b1, c1 = 1, h + w, w * h * (1 - MIN_OVERLAP) / (1 + MIN_OVERLAP)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (h + w), (1 - MIN_OVERLAP) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * MIN_OVERLAP, -2 * MIN_OVERLAP * (h + w), (MIN_OVERLAP - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode(boxes: list[tuple[int, float, float, float, float]], cfg: DetectorConfig) -> dict[str, np.ndarray]:
    """One image's training targets: heatmap (C, s, s) with a Gaussian peak of 1 at each centre, size (2, s, s)
    in cells, offset (2, s, s) of the centre inside its cell, and mask (s, s): 1 at the centres."""
    s = cfg.side
    heat = np.zeros((cfg.num_classes, s, s), np.float32)
    size, offset, mask = np.zeros((2, s, s), np.float32), np.zeros((2, s, s), np.float32), np.zeros((s, s), np.float32)
    ys, xs = np.mgrid[0:s, 0:s]
    for cls, x, y, w, h in boxes:
        if not 0 <= cls < cfg.num_classes:
            raise ValueError(f"box class {cls} is not in 0..{cfg.num_classes - 1}")
        cx, cy = (x + w / 2) / STRIDE, (y + h / 2) / STRIDE
        ix, iy = min(int(cx), s - 1), min(int(cy), s - 1)
        sigma = (2 * max(0, int(_radius(h / STRIDE, w / STRIDE))) + 1) / 6
        peak = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        heat[cls] = np.maximum(heat[cls], peak)
        size[:, iy, ix] = (w / STRIDE, h / STRIDE)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1
    return {"heatmap": heat, "size": size, "offset": offset, "mask": mask}


def collate(targets: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}


def loss(outputs: tuple[torch.Tensor, ...], targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """CenterNet's loss: penalty-reduced focal loss (alpha 2, beta 4) on the heatmaps over the number of
    objects, L1 on size (times SIZE_WEIGHT) and offset at the centres."""
    heat_logits, size, offset = outputs
    gt, mask = targets["heatmap"], targets["mask"]
    p = torch.sigmoid(heat_logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - p) * p**2 * (1 - gt) ** 4 * (1 - pos)).sum()
    n = pos.sum().clamp(min=1)
    focal = -(pos_loss + neg_loss) / n
    m = mask.unsqueeze(1)
    objects = mask.sum().clamp(min=1)
    size_l1 = (F.l1_loss(size.float() * m, targets["size"] * m, reduction="sum")) / objects
    offset_l1 = (F.l1_loss(offset.float() * m, targets["offset"] * m, reduction="sum")) / objects
    total = focal + SIZE_WEIGHT * size_l1 + offset_l1
    return total, {"focal": float(focal.detach()), "size": float(size_l1.detach()), "offset": float(offset_l1.detach())}


@torch.no_grad()
def decode(outputs: tuple[torch.Tensor, ...], *, k: int = 50, min_score: float = 0.01) -> list[list[tuple]]:
    """Per image: [(class index, score, x, y, w, h)] in input pixels, best first: the local maxima of the
    heatmaps (3x3), their top `k` above `min_score`, with their regressed size and offset."""
    heat_logits, size, offset = outputs
    heat = torch.sigmoid(heat_logits.float())
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    b, c, s, _ = heat.shape
    scores, idx = peaks.view(b, -1).topk(min(k, c * s * s))
    out = []
    for i in range(b):
        dets = []
        for score, j in zip(scores[i].tolist(), idx[i].tolist(), strict=True):
            if score < min_score:
                break
            cls, cell = divmod(j, s * s)
            iy, ix = divmod(cell, s)
            w, h = (float(v) * STRIDE for v in size[i, :, iy, ix].clamp(min=0))
            cx, cy = (ix + float(offset[i, 0, iy, ix])) * STRIDE, (iy + float(offset[i, 1, iy, ix])) * STRIDE
            dets.append((cls, score, cx - w / 2, cy - h / 2, w, h))
        out.append(dets)
    return out


def save_detector(model: nn.Module, classes: list[str]) -> bytes:
    """Weights + config + class names (tensors and plain types only)."""
    model = getattr(model, "module", model)
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "config": asdict(model.cfg), "classes": list(classes)}, buf)  # fmt: skip
    return buf.getvalue()


def load_detector(data: bytes) -> tuple[CenterNet, list[str]]:
    """The inverse of `save_detector`, with `weights_only=True`; the model is in eval mode."""
    blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = CenterNet(DetectorConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), list(blob["classes"])


def is_detector(data: bytes) -> bool:
    """Whether weights bytes are a detector's (`save_detector`) rather than a frame classifier's."""
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all: the classifier's loader names what is wrong
        return False
    return isinstance(blob, dict) and isinstance(blob.get("config"), dict) and "head_channels" in blob["config"]


class StackedHeads(nn.Module):
    """A detector with one output, (N, C + 4, S/4, S/4): heatmap logits, then size (w, h), then offset (x, y),
    for servers that take one tensor out (the MLflow model)."""

    def __init__(self, model: CenterNet):
        super().__init__()
        self.model, self.cfg = model, model.cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.model(x), dim=1)
