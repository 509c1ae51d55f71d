"""The trainer: one readable loop from batches of uint8 frames to `save_weights` bytes.

`train()` takes any iterable of batch dicts (`{"image": uint8 (B, 3, S, S), "label": int64 (B,)}`,
what `default_collate` makes of the reader's samples), so the dataset reader, a DataLoader over
a TensorDataset or a list of pre-made batches all work. The recipe:

- AdamW (decay on conv/linear weights only, not on BatchNorm or biases) with a one-cycle or
  cosine schedule stepped per batch, and label smoothing. AdamW rather than SGD+nesterov: the
  flywheel retrains on datasets from a few hundred to many thousand frames, often warm-started,
  and Adam's per-parameter step size lets one learning rate work across dataset sizes, widths
  and batch sizes, where SGD's learning rate has to be retuned with the batch size.
- channels_last (NHWC) on CUDA. Not on CPU: there it was ~30% faster for width 16, but oneDNN's
  NHWC backward in torch 2.13 aborts or segfaults for some shapes (width 8 at 32 px, odd batch sizes).
- CUDA: bf16 autocast, TF32 matmuls, non-blocking copies from pinned memory,
  optional `torch.compile`. CPU: fp32.
- The last epoch's weights, the one-cycle schedule's end; with `keep_best` the epoch with the best val
  macro-F1 (the latest of equals). Off by default: on held-out frames the last epoch scored higher over
  120 benchmark rows (BENCHMARKS.md, "The last epoch, not the best val epoch"). With `ema`, those of an
  exponential moving average of the weights, which is also what val scores.
- A checkpoint after every epoch (flywheel/training/checkpoint.py); a rerun with the same
  `checkpoint_dir` resumes where a crashed run stopped.
- DDP when launched by `torchrun` (gloo on CPU, NCCL on GPU; flywheel/training/ddp.py): metrics are
  all-reduced, only rank 0 writes checkpoints and returns weights.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from flywheel.config import IMAGE_SIZE, Settings, TrainSettings
from flywheel.evaluation.evaluate import macro_f1
from flywheel.model import FrameClassifier, ModelConfig, build_model, load_weights, save_weights
from flywheel.training import checkpoint, ddp
from flywheel.training import device as device_

MAX_AUTO_EPOCHS = 100  # the passes a run with `epochs: null` takes at most
SMALL_INPUT = 32  # px: inputs this small keep their full resolution in the stem (`stem_stride: null`)


class TrainConfig(TrainSettings):
    """The trainer's recipe: the `train:` settings (one set of defaults, flywheel/config.py) plus the
    model's input side. Validated like the settings: a bad value raises a ValueError naming the field."""

    image_size: int = Field(IMAGE_SIZE, ge=8, le=1024)

    @classmethod
    def from_settings(cls, settings: Settings, *, device: str | None = None) -> TrainConfig:
        """The recipe of these settings; `device` (e.g. the compute resource's) replaces `train.device`."""
        values = {**settings.train.model_dump(), "image_size": settings.image_size}
        return cls(**{**values, "device": device or values["device"]})

    def epochs_for(self, steps_per_epoch: int) -> int:
        """The passes over the data this run takes: `epochs` if set, else enough to take `steps`
        optimizer steps, at least `min_passes` and at most MAX_AUTO_EPOCHS (a few hundred frames
        get many passes; a large dataset `min_passes`, so its step budget grows with it)."""
        if self.epochs is not None:
            return self.epochs
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        return min(max(math.ceil(self.steps / steps_per_epoch), self.min_passes), MAX_AUTO_EPOCHS)

    def architecture(self, num_classes: int) -> ModelConfig:
        return ModelConfig(
            num_classes=num_classes, image_size=self.image_size, width=self.width, depth=self.depth,
            stem_stride=self.stem_stride or (1 if self.image_size <= SMALL_INPUT else 2),
            stem_pool=self.stem_pool, stem_kernel=self.stem_kernel, head=self.head, dropout=self.dropout, stages=self.stages,
        )




@dataclass(frozen=True)
class TrainResult:
    weights: bytes | None  # `save_weights` bytes; None on DDP ranks other than 0
    model_config: ModelConfig
    classes: list[str]
    history: list[dict[str, float]]  # one dict per epoch, see `_epoch_metrics`
    device: str
    world_size: int
    resumed_from_epoch: (
        int | None
    )  # epochs already done in the checkpoint resumed from; None: fresh
    warm_started: bool
    warm_start_note: str = ""  # why a given warm start was not used
    best_epoch: int | None = None  # the epoch (0-based) whose weights `weights` are, with `keep_best`; None: the last


# ----------------------------------------------------------------------------- model, optimizer


def _build_model(
    model_cfg: ModelConfig, classes: list[str], warm_start: bytes | None
) -> tuple[FrameClassifier, bool, str]:
    """A fresh model, or the champion's weights when its classes and architecture match ours."""
    model = build_model(model_cfg)
    if warm_start is None:
        return model, False, ""
    champion, champion_classes = load_weights(warm_start)
    if champion_classes != list(classes):
        return (
            model,
            False,
            f"warm start skipped: champion classes {champion_classes} != {list(classes)}",
        )
    if champion.cfg != model_cfg:
        return (
            model,
            False,
            f"warm start skipped: champion model config {champion.cfg} != {model_cfg}",
        )
    model.load_state_dict(champion.state_dict())
    return model, True, ""


def _make_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW; conv kernels and the head matrix decay, BatchNorm weights and biases (1-D) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Stepped once per batch; `total_steps` = passes * steps per epoch. A one-cycle run too short
    for a warmup of two steps anneals from `lr` instead: OneCycleLR divides by its warmup length
    in steps minus one (ZeroDivisionError at exactly one step), and one step is no warmup anyway."""
    if cfg.schedule == "onecycle" and cfg.warmup_pct * total_steps >= 2:
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=cfg.warmup_pct
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def _make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s weights and buffers (BatchNorm statistics too, so the
    averaged network needs no recalibration pass). Step t mixes in the new weights with 1 - min(decay,
    (1 + t) / (10 + t)): early on the average follows the weights, so the random start never lingers
    in it, however short the run (the warmup of TensorFlow's ExponentialMovingAverage)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        t = float(n)
        weight = 1.0 - min(decay, (1.0 + t) / (10.0 + t))
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, weight)
            else:  # BatchNorm's batch counter
                a.copy_(c)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def _steps_per_epoch(loader: Iterable, steps_per_epoch: int | None) -> int:
    """The schedule's epoch length: the explicit argument, else len(loader)."""
    if steps_per_epoch is not None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        return steps_per_epoch
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            "train_loader has no len(); pass steps_per_epoch so the LR schedule knows its length"
        ) from None
    if n < 1:
        raise ValueError("train_loader is empty (len 0)")
    return n


# ----------------------------------------------------------------------------- batches


def _check_batch(batch: dict, *, image_size: int, num_classes: int, where: str) -> None:
    """Catch wrong inputs on the CPU, before CUDA turns them into an opaque device assert."""
    if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
        raise ValueError(f"{where}: a batch must be a dict with 'image' and 'label'")
    x, y = batch["image"], batch["label"]
    if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, image_size, image_size):
        raise ValueError(
            f"{where}: 'image' must be uint8 (B, 3, {image_size}, {image_size}), "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: 'label' must be (B,) = ({x.shape[0]},), got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{where}: 'label' values must be in [0, {num_classes}), got {int(y.min())}..{int(y.max())}"
        )


def _progress(it, *, enabled: bool, total: int, desc: str):
    return _counted(it, total=total, desc=desc) if enabled else it


def _counted(it, *, total: int, desc: str):
    from flywheel import progress as bars

    with bars.bar(total=total, desc=desc, unit="batch", progress=True) as bar:
        for item in it:
            yield item
            bar.update()


# ----------------------------------------------------------------------------- evaluation


def _epoch_metrics(sums: torch.Tensor, group: ddp.Dist, prefix: str) -> dict[str, float]:
    """sums = [loss * n, correct, n] on this rank -> mean loss and accuracy over all ranks."""
    loss_sum, correct, n = ddp.all_reduce(sums.clone(), group).tolist()
    if n == 0:
        raise ValueError(f"{prefix}_loader yielded no batches this epoch (on any rank)")
    return {f"{prefix}_loss": loss_sum / n, f"{prefix}_acc": correct / n}


@torch.no_grad()
def _evaluate(
    model: nn.Module, loader: Iterable, *, cfg: TrainConfig, num_classes: int, device, group: ddp.Dist
) -> dict:
    """Plain cross-entropy (no smoothing), accuracy and macro-F1 on `loader`; each rank scores its own share."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    cm = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)  # (true, predicted), flat
    for batch in loader:
        _check_batch(batch, image_size=cfg.image_size, num_classes=num_classes, where="val_loader")
        x, y = device_.to_device(batch, device)
        with device_.autocast(device):
            logits = model(x).float()  # (B, C)
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
        cm += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
    cm = ddp.all_reduce(cm, group).view(num_classes, num_classes).cpu().numpy()
    return {**_epoch_metrics(sums, group, "val"), "val_macro_f1": macro_f1(cm)}


# ----------------------------------------------------------------------------- the loop


def train(
    *,
    train_loader: Iterable[dict],
    val_loader: Iterable[dict] | None = None,
    classes: list[str],
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    warm_start: bytes | None = None,
    set_epoch: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch_model: Callable[[int, nn.Module], None] | None = None,
    steps_per_epoch: int | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a FrameClassifier on batches of uint8 frames; resume from `checkpoint_dir` if it holds one.

    `warm_start`: champion weights (`save_weights` bytes), used only when classes and model config
    match. `set_epoch(epoch)` is called before each epoch (0-based) so the reader reshuffles;
    `on_epoch_end(epoch, metrics)` after the epoch's checkpoint is written (rank 0 only);
    `on_epoch_model(epoch, model)` then, with the model in eval mode, to look at, not to change
    (a benchmark scores it on held-out frames: time to accuracy).
    Under torchrun each rank passes its own share of the data.
    """
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be >= 2 unique names, got {classes}")
    device = device_.pick_device(cfg.device)
    with ddp.joined(device) as group:
        return _train(
            train_loader=train_loader,
            val_loader=val_loader,
            classes=list(classes),
            cfg=cfg,
            checkpoint_dir=checkpoint_dir,
            warm_start=warm_start,
            set_epoch=set_epoch,
            on_epoch_end=on_epoch_end,
            on_epoch_model=on_epoch_model,
            steps_per_epoch=steps_per_epoch,
            progress=progress,
            device=device,
            group=group,
        )


def _train(
    *,
    train_loader: Iterable[dict],
    val_loader: Iterable[dict] | None,
    classes: list[str],
    cfg: TrainConfig,
    checkpoint_dir: Path | None,
    warm_start: bytes | None,
    set_epoch: Callable[[int], None] | None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None,
    on_epoch_model: Callable[[int, nn.Module], None] | None,
    steps_per_epoch: int | None,
    progress: bool,
    device: torch.device,
    group: ddp.Dist,
) -> TrainResult:
    """The loop of `train`, inside the process group's lifetime."""
    torch.manual_seed(cfg.seed)  # same on every rank: identical initial weights
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels

    model_cfg = cfg.architecture(len(classes))
    model, warm_started, warm_note = _build_model(model_cfg, classes, warm_start)
    model = model.to(device).to(memory_format=device_.memory_format(device))
    steps = ddp.agreed_steps(_steps_per_epoch(train_loader, steps_per_epoch), group, device)
    epochs = cfg.epochs_for(steps)
    optimizer = _make_optimizer(model, cfg, device)
    scheduler = _make_scheduler(optimizer, cfg, total_steps=epochs * steps)

    # Resume: the checkpoint holds everything the next epoch depends on.
    ckpt_path = checkpoint_dir / checkpoint.CHECKPOINT_NAME if checkpoint_dir is not None else None
    loader_state = checkpoint.loader_state_owner(train_loader)
    start_epoch, history, resumed_from = 0, [], None
    best: dict | None = None  # {"epoch", "val_macro_f1", "model"}: the best val epoch so far, with `keep_best`
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = checkpoint.load(ckpt_path, train_config=cfg.model_dump(), classes=classes)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        checkpoint.set_rng_state(ckpt["rng"], device)
        if loader_state is not None and ckpt.get("loader") is not None:
            loader_state.load_state_dict(ckpt["loader"])
        start_epoch = resumed_from = int(ckpt["epoch"])
        history = list(ckpt["history"])
        warm_started, warm_note = bool(ckpt["warm_started"]), str(ckpt["warm_start_note"])
        best = ckpt.get("best")

    # With `ema`: the running average of the weights and BatchNorm statistics, what is scored and returned.
    ema = _make_ema(model, cfg.ema) if cfg.ema is not None else None
    if ema is not None and resumed_from is not None:
        ema.load_state_dict(ckpt["ema"])
    plain = model  # the module whose state_dict we train
    scored = ema.module if ema is not None else plain  # the module we validate, keep and return
    if group.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile and device.type == "cuda":
        model = torch.compile(model)

    for epoch in range(start_epoch, epochs):
        if set_epoch is not None:
            set_epoch(epoch)
        model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # [loss * n, correct, n]
        lr = scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        it = iter(train_loader)
        for _ in _progress(
            range(steps), enabled=progress and group.is_main, total=steps, desc=f"epoch {epoch}"
        ):
            batch = ddp.next_batch_everywhere(it, group, device)
            if batch is None:
                break  # this epoch ran short of `steps`; the schedule simply doesn't finish it
            _check_batch(
                batch, image_size=cfg.image_size, num_classes=len(classes), where="train_loader"
            )
            x, y = device_.to_device(batch, device)
            with device_.autocast(device):
                logits = model(x)  # (B, C)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = scheduler.get_last_lr()[0]  # the lr this step used
            scheduler.step()
            if ema is not None:
                ema.update_parameters(plain)
            # Accumulate on the device: no host sync per step.
            sums[0] += loss.detach().double() * len(y)
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += len(y)
        del it  # stop the loader's workers before validation starts its own
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, **_epoch_metrics(sums, group, "train")}
        n_images = ddp.all_reduce(sums[2:].clone(), group).item()
        if val_loader is not None:
            metrics.update(
                _evaluate(
                    scored, val_loader, cfg=cfg, num_classes=len(classes), device=device, group=group
                )
            )
        metrics.update(lr=lr, images_per_s=n_images / seconds if seconds > 0 else math.nan)
        history.append(metrics)
        # val metrics are all-reduced, so every rank keeps the same epoch
        # Macro-F1, not accuracy: on a small, unbalanced val split an early epoch that answers the majority
        # class everywhere can match a later, better one on accuracy.
        if cfg.keep_best and "val_macro_f1" in metrics and (best is None or metrics["val_macro_f1"] >= best["val_macro_f1"]):
            best = {"epoch": epoch, "val_macro_f1": metrics["val_macro_f1"],
                    "model": {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}}  # fmt: skip

        if group.is_main and ckpt_path is not None:
            checkpoint.save(
                ckpt_path,
                {
                    "model": {k: v.detach().cpu() for k, v in plain.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,  # epochs completed
                    "rng": checkpoint.rng_state(device),
                    "loader": loader_state.state_dict() if loader_state is not None else None,
                    "history": history,
                    "train_config": cfg.model_dump(),
                    "model_config": asdict(model_cfg),
                    "classes": classes,
                    "warm_started": warm_started,
                    "warm_start_note": warm_note,
                    "best": best,
                    "ema": ema.state_dict() if ema is not None else None,
                },
            )
        if group.is_main and on_epoch_end is not None:
            on_epoch_end(epoch, dict(metrics))
        if group.is_main and on_epoch_model is not None:
            on_epoch_model(epoch, scored.eval())

    if best is not None:  # the best val epoch's weights, not the last epoch's
        scored.load_state_dict(best["model"])
    return TrainResult(
        weights=save_weights(scored, model_cfg, classes) if group.is_main else None,
        model_config=model_cfg,
        classes=classes,
        history=history,
        device=str(device),
        world_size=group.world_size,
        resumed_from_epoch=resumed_from,
        warm_started=warm_started,
        warm_start_note=warm_note,
        best_epoch=best["epoch"] if best is not None else None,
    )
