"""Benchmark: training-step throughput of the default model per head (flywheel/model.py), the
trainer's hot path, on synthetic uint8 batches: forward, backward and an AdamW step."""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from flywheel.model import HEADS, ModelConfig, build_model


def bench_train_step(*, sizes: tuple[int, ...] = (64, 96), heads: tuple[str, ...] = HEADS, batch: int = 64,
                     steps: int = 10, repeats: int = 3, threads: int = 2) -> dict:  # fmt: skip
    """Images/s (median of `repeats` timings of `steps` steps) per input size and head."""
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; known: {list(HEADS)}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for size in sizes:
            for head in heads:
                torch.manual_seed(0)
                model = build_model(ModelConfig(4, size, 16, 2, 2, head))
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
                rows.append({"image_size": size, "head": head, "images_per_s": round(sorted(rates)[len(rates) // 2])})
    finally:
        torch.set_num_threads(before)
    return {"config": {"batch": batch, "steps": steps, "repeats": repeats, "threads": threads, "width": 16,
                       "depth": 2, "stem_stride": 2, "torch": torch.__version__, "cpus": os.cpu_count(),
                       "load_average": [round(v, 1) for v in os.getloadavg()]},
            "rows": rows}  # fmt: skip


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
