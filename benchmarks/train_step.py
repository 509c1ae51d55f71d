"""Benchmark: training-step throughput of the model per head and variant (flywheel/model.py), the
trainer's hot path, on synthetic uint8 batches: forward, backward and an AdamW step; and the
script CNN yardstick's, timed the same way, so a recipe's time can be set against the CNN's."""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from flywheel.model import HEADS, ModelConfig, build_model
from flywheel.training.baseline import ScriptCNN


def bench_train_step(*, sizes: tuple[int, ...] = (64, 96), heads: tuple[str, ...] = HEADS, batch: int = 64,
                     steps: int = 10, repeats: int = 3, threads: int = 2, variants: dict[str, dict] | None = None,
                     cnn: bool = False) -> dict:  # fmt: skip
    """Images/s (median of `repeats` timings of `steps` steps) per input size, head and variant.

    `variants`: name -> ModelConfig fields (e.g. {"stem_pool": True, "width": 24}) over the default
    (width 16, depth 2, stride-2 stem), each timed with every head; `cnn`: the script CNN yardstick
    (flywheel/training/baseline.py) too, the same way."""
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; known: {list(HEADS)}")
    variants = variants or {"default": {}}
    fields = set(ModelConfig.__dataclass_fields__) - {"num_classes", "image_size", "head"}
    for name, v in variants.items():
        if set(v) - fields:
            raise ValueError(f"variant {name!r}: unknown model field(s) {sorted(set(v) - fields)}; known: {sorted(fields)}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for size in sizes:
            models = [({"head": head, "variant": name},
                       lambda size=size, head=head, v=v: build_model(ModelConfig(
                           4, size, head=head, **{"width": 16, "depth": 2, "stem_stride": 2, **v})))
                      for name, v in variants.items() for head in heads]  # fmt: skip
            if cnn:
                models.append(({"model": "script_cnn"}, lambda size=size: ScriptCNN(4, size)))
            for labels, make in models:
                torch.manual_seed(0)
                rows.append({"image_size": size, **labels, "images_per_s": _rate(make(), size, batch, steps, repeats)})
    finally:
        torch.set_num_threads(before)
    return {"config": {"batch": batch, "steps": steps, "repeats": repeats, "threads": threads, "width": 16,
                       "depth": 2, "stem_stride": 2, "variants": variants, "torch": torch.__version__,
                       "cpus": os.cpu_count(), "load_average": [round(v, 1) for v in os.getloadavg()]},
            "rows": rows}  # fmt: skip


def _rate(model: torch.nn.Module, size: int, batch: int, steps: int, repeats: int) -> int:
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)  # (B, 3, S, S)
    y = torch.randint(0, 4, (batch,))
    for _ in range(3):  # warm-up
        _step(model, opt, x, y)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            _step(model, opt, x, y)
        rates.append(batch * steps / (time.perf_counter() - t0))
    return round(sorted(rates)[len(rates) // 2])


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
