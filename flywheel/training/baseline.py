"""Yardsticks: plain models trained the standard way on the same frames, to measure the recipe against.

Neither is of this project's design, so neither can share its blind spots:

    cnn       the classic script CNN of the PyTorch CIFAR-10 tutorial family: 4 x (conv3x3-BN-ReLU-
              maxpool2) with 32/64/128/256 channels, flatten, dropout 0.5, linear 256, ReLU, linear;
              AdamW with a one-cycle schedule (peak lr 2e-3), label smoothing 0.1, batches of 64.
              The flattened map keeps where things are in the frame.
    resnet18  ResNet-18 as published (He et al. 2016; torchvision's layout: [2, 2, 2, 2] basic blocks,
              64-512 channels, global pool), with the CIFAR stem (3x3, stride 1, no max-pool) for inputs
              of 32 px or less, the ImageNet stem (7x7 stride 2, max-pool) above; AdamW (lr 1e-3, weight
              decay 5e-4) with a one-cycle schedule, label smoothing 0.1, batches of 64. The published
              SGD recipe (0.1 per 128 frames, nesterov) needs far more steps than ~1k frames x 10
              epochs give: it did not learn on 3 of 6 benchmark rows, AdamW learned at the same
              compute (BENCHMARKS.md, resnet18_optimizer_digits.json). Written in plain torch:
              torchvision does not import beside the CPU build.

Both train from scratch on a dataset version's train originals (its offline copies left out), without
augmentation, for a fixed number of epochs. Two users: `flywheel bench recipe` (both, at equal data)
and `check_challenger`, which trains the `cnn` on the train split after every training and scores it
and the challenger on val. The check says which of three things it saw:

    broken   the yardstick did not clearly learn (val accuracy within LEARNED of the majority class's
             share): the comparison proves nothing, and it says so rather than "not short"
    short    the challenger scored below the yardstick by more than the comparison's noise (two
             standard errors of the paired difference on the val frames): the recipe does not fit
             the data, and the retune sensor asks for a tune run
    ok       the challenger is at or above a yardstick that learned
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flywheel.data.reader import load_arrays
from flywheel.evaluation.evaluate import accuracy, confusion_matrix, macro_f1
from flywheel.model import Block, load_weights
from flywheel.predict import predict
from flywheel.store import Store

EPOCHS = 10  # the benchmark's; the per-turn check takes `tune.baseline_epochs` on `tune.baseline_frames`
LEARNED = 0.05  # a yardstick whose val accuracy is less than this above the majority share did not learn
METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - 0.45) / 0.25  # uint8 (B, 3, S, S) -> the flywheel model's normalization


class ScriptCNN(nn.Module):
    """4 x (conv3x3-BN-ReLU-maxpool2), 32/64/128/256 channels; flatten; dropout; linear 256; linear.

    Takes uint8 (B, 3, S, S) like the flywheel's model, so `predict` scores both the same way."""

    def __init__(self, num_classes: int, image_size: int, width: int = 32, blocks: int = 4):
        super().__init__()
        blocks = min(blocks, image_size.bit_length() - 1)  # an input under 16 px takes fewer max-pools
        layers, c, side = [], 3, image_size
        for i in range(blocks):
            c_out = width * 2**i
            layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]  # fmt: skip
            c, side = c_out, side // 2
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for {blocks} max-pools")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(c * side * side, 256), nn.ReLU(inplace=True),
            nn.Linear(256, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(_normalize(x)))  # (B, num_classes)


class ResNet18(nn.Module):
    """ResNet-18: stem, 4 stages of 2 basic blocks (64, 128, 256, 512 channels), global pool, linear."""

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        if image_size <= 32:  # CIFAR stem: a small input keeps its resolution
            stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        else:  # ImageNet stem
            stem = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1)]  # fmt: skip
        blocks, c = [], 64
        for i, c_out in enumerate((64, 128, 256, 512)):
            blocks += [Block(c, c_out, 1 if i == 0 else 2), Block(c_out, c_out, 1)]  # ResNet's basic block
            c = c_out
        self.features = nn.Sequential(*stem, *blocks)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(_normalize(x)), 1), 1))


def _adamw(lr: float) -> Callable:
    def make(model: nn.Module, batch_size: int):
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4), lr

    return make


YARDSTICKS: dict[str, tuple[Callable[[int, int], nn.Module], Callable]] = {
    "cnn": (lambda classes, size: ScriptCNN(classes, size), _adamw(2e-3)),
    "resnet18": (lambda classes, size: ResNet18(classes, size), _adamw(1e-3)),
}


def train_yardstick(images: np.ndarray, labels: np.ndarray, *, num_classes: int, kind: str = "cnn",
                    epochs: int = EPOCHS, batch_size: int = 64, seed: int = 0,
                    device: str | torch.device = "cpu",
                    on_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:  # fmt: skip
    """A yardstick (`kind`, see YARDSTICKS) trained the standard way on uint8 images (N, 3, S, S) and
    labels (N,): a one-cycle schedule stepped per batch, label smoothing 0.1, shuffled batches, no
    augmentation. `on_epoch(epoch, model)` after each epoch, the model in eval mode (to look at).
    Returns the model in eval mode, on the CPU."""
    if kind not in YARDSTICKS:
        raise ValueError(f"yardstick must be one of {sorted(YARDSTICKS)}, got {kind!r}")
    if len(labels) == 0:
        raise ValueError("a yardstick needs at least one train frame")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    build, optimizer = YARDSTICKS[kind]
    torch.manual_seed(seed)
    model = build(num_classes, images.shape[-1]).to(device)
    opt, peak = optimizer(model, batch_size)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    steps = -(-len(y_all) // batch_size)
    total = epochs * steps
    if total * 0.25 >= 2:
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total, pct_start=0.25)
    else:  # too few steps for a warmup (OneCycleLR divides by its length minus one): anneal from the peak
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y_all), generator=g)
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            if len(idx) < 2 and steps > 1:
                continue  # BatchNorm needs two frames; a last batch of one is dropped
            x, y = x_all[idx].to(device), y_all[idx].to(device)  # (B, 3, S, S) uint8, (B,)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(epoch, model.eval())
            model.train()
    return model.cpu().eval()


def learned(val_accuracy: float, val_labels: np.ndarray) -> bool:
    """Whether a val accuracy is clearly above what predicting the majority class scores."""
    majority = np.bincount(val_labels).max() / len(val_labels) if len(val_labels) else 1.0
    return val_accuracy >= majority + LEARNED


def train_originals(store: Store, manifest: dict, image_size: int, *, limit: int | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A version's train rows without the offline copies, decoded as the reader decodes them;
    at most `limit` of them (a seeded sample, in order)."""
    images, labels, meta = load_arrays(store, manifest, split="train", image_size=image_size)
    keep = np.flatnonzero(["#aug" not in f for f in meta["frame_id"]])
    if limit is not None and len(keep) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(keep, limit, replace=False))
    return images[keep], labels[keep]


def check_challenger(store: Store, manifest: dict, weights: bytes, *, image_size: int, metric: str,
                     epochs: int = 4, max_frames: int = 800, seed: int = 0,
                     device: str = "cpu") -> dict:  # fmt: skip
    """The challenger (`weights`) and the `cnn` yardstick, trained here for `epochs` on at most
    `max_frames` of the version's train originals (a seeded sample: the check costs a fraction of a
    training), scored on the val split: {metric, challenger, baseline, verdict, short, ...}.
    `verdict`: broken, short or ok (module docstring); `short` is verdict == "short"."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    val_x, val_y, _ = load_arrays(store, manifest, split="val", image_size=image_size)
    if len(val_y) == 0:
        raise ValueError(f"dataset version v{manifest['version']} has no val rows to compare on")
    model, classes = load_weights(weights)
    x, y = train_originals(store, manifest, image_size, limit=max_frames, seed=seed)
    t0 = time.perf_counter()
    base = train_yardstick(x, y, num_classes=len(classes), epochs=epochs, seed=seed, device=device)
    seconds = time.perf_counter() - t0

    ours_pred, theirs_pred = (predict(m, val_x, device=device).probs.argmax(1) for m in (model, base))
    ours, theirs = (confusion_matrix(p, val_y, len(classes)) for p in (ours_pred, theirs_pred))
    challenger, baseline = round(METRICS[metric](ours), 4), round(METRICS[metric](theirs), 4)
    # The noise of the comparison: two standard errors of the paired difference in accuracy on these
    # val frames (frames exactly one of the two gets right). A challenger within it is not short.
    discordant = int(((ours_pred == val_y) != (theirs_pred == val_y)).sum())
    allowance = round(2 * math.sqrt(discordant) / len(val_y), 4)
    if not learned(accuracy(theirs), val_y):
        verdict = "broken"
    else:
        verdict = "short" if challenger < baseline - allowance else "ok"
    return {"metric": metric, "challenger": challenger, "baseline": baseline, "verdict": verdict,
            "short": verdict == "short", "allowance": allowance, "discordant_frames": discordant,
            "baseline_val_accuracy": round(accuracy(theirs), 4),
            "majority_share": round(float(np.bincount(val_y).max() / len(val_y)), 4),
            "val_frames": len(val_y), "baseline_train_frames": len(y), "baseline_epochs": epochs,
            "baseline_kind": "cnn", "baseline_seconds": round(seconds, 1),
            "dataset_version": manifest["version"]}  # fmt: skip
