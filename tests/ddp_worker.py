"""Two-process DDP smoke run for tests/training/test_train.py, launched by torchrun.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py OUTDIR [--device cpu]

Each rank builds its own share (every world_size-th frame) of a synthetic separable set, trains
with `flywheel.training.train.train`, and writes `rank<R>.json` (batches seen, history) to OUTDIR; rank 0
also writes `weights.pt`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from flywheel.training.train import TrainConfig, train

CLASSES = ["red", "green", "blue"]
COLORS = torch.tensor(
    [[220, 30, 30], [30, 200, 40], [40, 50, 230]], dtype=torch.float32
)  # (C, 3) RGB


def synthetic_frames(n: int, *, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (n, 3, size, size): grey noise with a square of the class colour somewhere."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    images = torch.rand(n, 3, size, size, generator=g) * 255
    side = size // 2
    for i in range(n):
        r, c = torch.randint(0, size - side + 1, (2,), generator=g).tolist()
        images[i, :, r : r + side, c : c + side] = COLORS[labels[i]].view(3, 1, 1)
    return images.to(torch.uint8), labels


class _CountingFrames(Dataset):
    """Map-style dicts like the reader's samples; counts the samples this rank draws."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels, self.drawn = images, labels, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        self.drawn += 1
        return {"image": self.images[i], "label": self.labels[i], "frame_id": f"f{i}"}


def ddp_smoke_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)  # two processes on a small machine

    images, labels = synthetic_frames(384, size=16, seed=0)
    train_set = _CountingFrames(images[rank::world], labels[rank::world])  # this rank's share
    val_images, val_labels = synthetic_frames(96, size=16, seed=1)
    val_set = _CountingFrames(val_images[rank::world], val_labels[rank::world])
    cfg = TrainConfig(
        epochs=3, batch_size=32, lr=1e-2, width=8, depth=1, image_size=16, device=args.device
    )
    batches = []
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True)
    result = train(
        train_loader=_Recording(loader, batches),
        val_loader=DataLoader(val_set, batch_size=64),
        classes=CLASSES,
        cfg=cfg,
        checkpoint_dir=args.outdir / "ckpt",
    )
    args.outdir.mkdir(parents=True, exist_ok=True)
    report = {
        "rank": rank,
        "world_size": result.world_size,
        "batches": len(batches),
        "history": result.history,
        "has_weights": result.weights is not None,
    }
    (args.outdir / f"rank{rank}.json").write_text(json.dumps(report))
    if result.weights is not None:
        (args.outdir / "weights.pt").write_bytes(result.weights)


class _Recording:
    """Passes batches through and records their sizes, to show what each rank trained on."""

    def __init__(self, loader, seen: list):
        self.loader, self.seen = loader, seen

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.seen.append(len(batch["label"]))
            yield batch


if __name__ == "__main__":
    ddp_smoke_main()
