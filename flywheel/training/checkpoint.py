"""The trainer's checkpoints: everything the next epoch depends on, written atomically.

A checkpoint holds the model, optimizer, scheduler, RNG states (torch, numpy, Python, CUDA), the
loader's state and the history; it is loaded with `weights_only=True` (plain types and tensors,
no pickles) and refused when it was written for other classes or another recipe.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"
# Fields that may change between a crashed run and its resumption without changing the result.
RESUME_FREE_FIELDS = ("device", "compile", "num_workers")


def loader_state_owner(loader) -> Any | None:
    """The object whose state_dict/load_state_dict resumes the data order (loader or its dataset)."""
    for obj in (loader, getattr(loader, "dataset", None)):
        if obj is not None and hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
            return obj
    return None


def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _to_plain(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _to_plain(obj):
    """Tuples to lists, recursively: plain types that weights_only loading accepts."""
    if isinstance(obj, tuple | list):
        return [_to_plain(o) for o in obj]
    return obj


def save(path: Path, state: dict) -> None:
    """Write to a temporary name, then rename: a crash leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, *, train_config: dict, classes: list[str]) -> dict:
    """The checkpoint at `path`; a ValueError when it was written for other classes or another recipe
    (`train_config`, the TrainConfig's fields, less RESUME_FREE_FIELDS)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["classes"] != list(classes):
        raise ValueError(f"checkpoint {path} is for classes {ckpt['classes']}, not {list(classes)}")
    ours = {k: v for k, v in train_config.items() if k not in RESUME_FREE_FIELDS}
    theirs = {k: v for k, v in ckpt["train_config"].items() if k not in RESUME_FREE_FIELDS}
    if ours != theirs:
        diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
        raise ValueError(
            f"checkpoint {path} was written with another TrainConfig (checkpoint, now): {diff}"
        )
    return ckpt
