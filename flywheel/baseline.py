"""The plain baseline: what a short script would train on the same frames, as a yardstick for the recipe.

A small conv net (3 x conv3x3-BN-ReLU-maxpool, 32/64/128 channels, global pool, linear) trained with
Adam (lr 1e-3), plain cross-entropy, shuffled batches of 64, no augmentation, for a fixed number of
epochs, from scratch, on a dataset version's train originals (its offline copies left out). Two
users: `flywheel bench recipe` (the recipe against it on datasets of different character) and
`check_challenger`, which scores a freshly trained challenger and the baseline on the val split
after every training: a challenger short of it is a sign the recipe does not fit the data, and
the retune sensor asks for a tune run.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from flywheel.evaluate import accuracy, confusion_matrix, macro_f1
from flywheel.model import load_weights
from flywheel.predict import predict
from flywheel.reader import load_arrays
from flywheel.store import Store

EPOCHS = 20  # 5, a typical script's, leave it near chance on ~1k frames here (BENCHMARKS.md)
MAX_FRAMES = 20_000  # a larger train split is subsampled (seeded): a yardstick needs no more
METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}


class PlainCNN(nn.Module):
    """3 x (conv3x3-BN-ReLU-maxpool2) with width, 2 width, 4 width channels; global pool; linear.

    Takes uint8 (B, 3, S, S) like the flywheel's model, so `predict` scores both the same way.
    """

    def __init__(self, num_classes: int, width: int = 32, blocks: int = 3):
        super().__init__()
        layers, c = [], 3
        for i in range(blocks):
            c_out = width * 2**i
            layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]  # fmt: skip
            c = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255.0 - 0.45) / 0.25  # (B, 3, S, S), the flywheel model's normalization
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def train_baseline(images: np.ndarray, labels: np.ndarray, *, num_classes: int, epochs: int = EPOCHS,
                   batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                   device: str | torch.device = "cpu") -> PlainCNN:  # fmt: skip
    """The plain recipe on uint8 images (N, 3, S, S) and labels (N,): Adam, cross-entropy, shuffled
    batches, no augmentation. Returns the model in eval mode, on the CPU."""
    if len(labels) == 0:
        raise ValueError("the baseline needs at least one train frame")
    torch.manual_seed(seed)
    model = PlainCNN(num_classes).to(device)
    data = TensorDataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for x, y in loader:  # x (B, 3, S, S) uint8, y (B,)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.cpu().eval()


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
                     epochs: int = EPOCHS, seed: int = 0, device: str = "cpu") -> dict:  # fmt: skip
    """The challenger (`weights`) and the plain baseline, trained here on the version's train
    originals, scored by `metric` on the val split: {metric, challenger, baseline, short, ...}.
    `short`: the challenger scores below the baseline."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    val_x, val_y, _ = load_arrays(store, manifest, split="val", image_size=image_size)
    if len(val_y) == 0:
        raise ValueError(f"dataset version v{manifest['version']} has no val rows to compare on")
    model, classes = load_weights(weights)
    x, y = train_originals(store, manifest, image_size, limit=MAX_FRAMES, seed=seed)
    t0 = time.perf_counter()
    base = train_baseline(x, y, num_classes=len(classes), epochs=epochs, seed=seed, device=device)
    seconds = time.perf_counter() - t0

    def score(m: nn.Module) -> float:
        preds = predict(m, val_x, device=device).probs.argmax(1)  # (N,)
        return round(METRICS[metric](confusion_matrix(preds, val_y, len(classes))), 4)

    ours, theirs = score(model), score(base)
    return {"metric": metric, "challenger": ours, "baseline": theirs, "short": ours < theirs,
            "val_frames": len(val_y), "baseline_train_frames": len(y), "baseline_epochs": epochs,
            "baseline_seconds": round(seconds, 1),
            "dataset_version": manifest["version"]}  # fmt: skip
