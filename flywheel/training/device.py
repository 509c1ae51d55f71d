"""Where the tensors go: the device, the loader in front of it, memory format and precision on it.

CUDA gets pinned memory, non-blocking copies, channels_last (NHWC) and bf16 autocast; the CPU
gets NCHW and fp32 (oneDNN's NHWC backward aborts for some shapes in torch 2.13). Under torchrun
the GPU is the one of LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

if TYPE_CHECKING:
    from flywheel.training.train import TrainConfig


def pick_device(pref: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU; under torchrun the GPU is the one of LOCAL_RANK."""
    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {pref!r}")
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def make_loader(
    dataset: Dataset, *, cfg: TrainConfig, device: torch.device, shuffle: bool = False
) -> DataLoader:
    """A DataLoader with the trainer's batch size and workers, pinned memory on CUDA.

    `shuffle` is for map-style datasets only; an IterableDataset (the shard reader) shuffles itself.
    A reader with `batched=True` hands over whole batches (no automatic batching).
    """
    if shuffle and isinstance(dataset, IterableDataset):
        raise ValueError(
            "shuffle=True needs a map-style dataset; an IterableDataset shuffles itself"
        )
    batched = getattr(dataset, "batched", False)  # a shard reader that yields whole batches itself
    if batched and dataset.batch_size != cfg.batch_size:
        raise ValueError(
            f"the reader yields batches of {dataset.batch_size}, the trainer wants {cfg.batch_size}"
        )
    return DataLoader(
        dataset,
        batch_size=None if batched else cfg.batch_size,
        shuffle=shuffle,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S) uint8
    y = batch["label"].to(device, non_blocking=True).long()  # (B,)
    return x.contiguous(memory_format=memory_format(device)), y


def memory_format(device: torch.device) -> torch.memory_format:
    """NHWC on CUDA (tensor-core convolutions); NCHW on CPU, where oneDNN's NHWC backward crashes for some shapes."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
