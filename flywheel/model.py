"""A small ResNet-style CNN for frame classification, and its save/load format.

The model takes uint8 images (B, 3, S, S) and normalizes them itself, so the deployed ONNX
graph, the trainer and the fleet simulator all feed it raw pixels. Weights are stored as a
plain state dict beside a JSON-able config and loaded with `weights_only=True`: no pickles.

Heads on the last feature map (B, C, s, s), `ModelConfig.head`:
- `spatial`: a 1x1 squeeze to w channels, flatten, dropout, a hidden layer. It sees *where* each
  feature is relative to the others: the label when it is the distance to the car ahead, or a
  letter's strokes. On small data it overfits where position matters less.
- `coord`: each position's features with its (x, y) in the frame, mixed by a 1x1 conv, then global
  average pooling: position-aware with few weights (CoordConv, Liu et al. 2018).
- `both` (the default): the two side by side. Chosen by measurement (one seed, BENCHMARKS.md "The
  training recipe"): a flattening head alone lost 4-10 points to `coord` or `pool` on four of six
  dataset families, and `coord` alone sat at chance on 26 letters where flattening learned.
- `pool`: global average pooling, the translation-invariant head of the classic ResNet.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

HEADS = ("both", "spatial", "coord", "pool")  # see the module docstring
MEAN = (0.45, 0.45, 0.45)
STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    image_size: int = 64
    width: int = 32  # channels of the first stage; doubled at each later stage
    depth: int = 2  # residual blocks per stage
    stages: int = 3  # stages of residual blocks; stage i has width * 2**i channels, each after the first halves the map
    stem_stride: int = 2  # 2 halves the resolution at once: ~4x fewer FLOPs, fine for small inputs
    # With stem_stride 2: convolve at full resolution, then max-pool (the script CNN's first block), not a
    # stride-2 conv that computes only every other position; a few % more FLOPs, small objects keep their detail.
    stem_pool: bool = False
    stem_kernel: int = 3  # the stem conv's side: 5 or 7 (ResNet's stem) see more context before the stride drops pixels
    head: Literal["both", "spatial", "coord", "pool"] = "both"
    hidden: int = 128  # features of the spatial head's hidden layer (the embedding)
    dropout: float = 0.3  # before the spatial head's hidden layer

    @property
    def feature_side(self) -> int:
        """The side of the last feature map: the stem and `stages - 1` stride-2 stages, each ceil(n / 2)."""
        side = -(-self.image_size // self.stem_stride)
        for _ in range(self.stages - 1):
            side = -(-side // 2)
        return side


class Block(nn.Module):
    """Two 3x3 convs with a skip; stride 2 and a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x))


class CoordPool(nn.Module):
    """(B, C, s, s) -> (B, C): each position's features and its (x, y) in [-1, 1], a 1x1 conv, ReLU, mean."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)  # (1, 2, s, s)
        self.mix = nn.Sequential(nn.Conv2d(channels + 2, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coords = self.coords.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        return self.mix(torch.cat([x, coords], 1)).mean((2, 3))


def _spatial(channels: int, cfg: ModelConfig) -> nn.Module:
    """(B, C, s, s) -> (B, hidden): a 1x1 squeeze to C/4 channels (fewer weights below), flatten, dropout, linear."""
    squeezed = max(channels // 4, 4)
    return nn.Sequential(
        nn.Conv2d(channels, squeezed, 1, bias=False), nn.BatchNorm2d(squeezed), nn.ReLU(), nn.Flatten(),
        nn.Dropout(cfg.dropout), nn.Linear(squeezed * cfg.feature_side**2, cfg.hidden), nn.ReLU(),
    )  # fmt: skip


class _Both(nn.Module):
    """The spatial and the coord head's features side by side: (B, hidden + C)."""

    def __init__(self, spatial: nn.Module, coord: nn.Module):
        super().__init__()
        self.spatial, self.coord = spatial, coord

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.spatial(x), self.coord(x)], 1)


class FrameClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255, persistent=False)
        pool = cfg.stem_pool and cfg.stem_stride == 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, cfg.stem_kernel, 1 if pool else cfg.stem_stride, cfg.stem_kernel // 2, bias=False),
            nn.BatchNorm2d(w), nn.ReLU(),
            *([nn.MaxPool2d(2, ceil_mode=True)] if pool else []),
        )
        stages, c = [], w
        for i, c_out in enumerate(w * 2**i for i in range(cfg.stages)):
            for j in range(cfg.depth):
                stages.append(Block(c, c_out, stride=2 if (j == 0 and i > 0) else 1))
                c = c_out
        self.stages = nn.Sequential(*stages)
        if cfg.head == "spatial":
            self.neck = _spatial(c, cfg)
            c = cfg.hidden
        elif cfg.head == "both":
            self.neck = _Both(_spatial(c, cfg), CoordPool(c, cfg.feature_side))
            c = cfg.hidden + c
        elif cfg.head == "coord":
            self.neck = CoordPool(c, cfg.feature_side)
        elif cfg.head == "pool":
            self.neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        else:
            raise ValueError(f"head must be 'both', 'spatial', 'coord' or 'pool', got {cfg.head!r}")
        self.head = nn.Linear(c, cfg.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (B, hidden) or, with the pool head, (B, width * 2**(stages-1)), for uint8 or
        float images (B, 3, S, S)."""
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        x = self.stages(self.stem(x))  # (B, C, s, s), s = cfg.feature_side
        return self.neck(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, num_classes) logits


def build_model(cfg: ModelConfig) -> FrameClassifier:
    return FrameClassifier(cfg)


def save_weights(model: nn.Module, cfg: ModelConfig, classes: list[str]) -> bytes:
    """Serialize weights + config + class names (tensors and plain types only)."""
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "config": asdict(cfg), "classes": list(classes)}, buf)
    return buf.getvalue()


def load_weights(data: bytes) -> tuple[FrameClassifier, list[str]]:
    """The inverse of `save_weights`, with `weights_only=True`; the model is in eval mode."""
    blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    cfg = ModelConfig(**{"head": "pool", **blob["config"]})  # models saved before the head was a choice pooled
    model = build_model(cfg)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), list(blob["classes"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
