"""One-shot GPU check of the trainer: bf16 + channels_last, eager vs torch.compile, CPU/GPU agreement, NCCL DDP,
and the flywheel itself: `flywheel iterate` on CUDA, and with 2 GPUs a 2-rank NCCL run through the Pipes path.

    python scripts/gpu_check.py            # full run on a CUDA GPU, about 2 minutes on an H100
    python scripts/gpu_check.py --quick    # tiny sizes; also runs (slowly) on a CPU-only machine

Trains FrameClassifier with `flywheel.training.train.train` on synthetic separable frames held in pinned
memory (so it measures the trainer, not a data loader), prints images/s and accuracy per run,
and writes everything to $OUT/gpu_check.json when OUT is set. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout, installed or not

from flywheel.model import load_weights  # noqa: E402
from flywheel.predict import predict  # noqa: E402
from flywheel.training.train import TrainConfig, train  # noqa: E402

CLASSES = ["c0", "c1", "c2", "c3", "c4", "c5"]


def synthetic_frames(n: int, *, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, size, size): noise with a half-size square of the class colour at a random place."""
    g = torch.Generator().manual_seed(seed)
    colors = torch.tensor(
        [
            [220, 30, 30],
            [30, 200, 40],
            [40, 50, 230],
            [230, 220, 30],
            [30, 210, 220],
            [200, 40, 210],
        ]
    )
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    side = size // 2
    r, c = (torch.randint(0, size - side + 1, (n, 1, 1), generator=g) for _ in range(2))
    ar = torch.arange(size)
    inside = (
        (ar.view(1, -1, 1) >= r)
        & (ar.view(1, -1, 1) < r + side)
        & (ar.view(1, 1, -1) >= c)
        & (ar.view(1, 1, -1) < c + side)
    )
    images = torch.where(
        inside.unsqueeze(1), colors[labels].to(torch.uint8).view(n, 3, 1, 1), images
    )
    return images, labels


class PinnedBatches:
    """Batch dicts sliced from pinned tensors (slices of pinned memory stay pinned)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        pin: bool,
        drop_last: bool = True,
    ):
        self.images = images.pin_memory() if pin else images
        self.labels = labels.pin_memory() if pin else labels
        self.batch_size, self.drop_last = batch_size, drop_last

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return (
            n // b if self.drop_last else -(-n // b)
        )  # training drops the ragged tail: fixed shapes for compile

    def __iter__(self):
        for i in range(len(self)):
            s = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield {"image": self.images[s], "label": self.labels[s]}


def sizes(quick: bool) -> dict:
    if quick:
        return dict(
            n_train=512,
            n_val=128,
            epochs=4,
            image_size=16,
            width=8,
            depth=1,
            batch_size=32,
            lr=1e-2,
        )
    return dict(
        n_train=32768,
        n_val=4096,
        epochs=3,
        image_size=64,
        width=32,
        depth=2,
        batch_size=256,
        lr=3e-3,
    )


def run_training(
    name: str, *, s: dict, data, device: str, compile: bool, batch_size: int
) -> tuple[dict, bytes]:
    (xtr, ytr), (xva, yva) = data
    cfg = TrainConfig(
        epochs=s["epochs"],
        batch_size=batch_size,
        lr=s["lr"],
        width=s["width"],
        depth=s["depth"],
        image_size=s["image_size"],
        device=device,
        compile=compile,
    )
    pin = device == "cuda"
    t0 = time.perf_counter()
    result = train(
        train_loader=PinnedBatches(xtr, ytr, batch_size, pin),
        val_loader=PinnedBatches(xva, yva, 512, pin, drop_last=False),
        classes=CLASSES,
        cfg=cfg,
    )
    wall = time.perf_counter() - t0
    h = result.history
    row = {
        "name": name,
        "device": result.device,
        "compile": compile,
        "batch_size": batch_size,
        "images_per_s_by_epoch": [round(m["images_per_s"], 1) for m in h],
        "images_per_s": round(
            h[-1]["images_per_s"], 1
        ),  # last epoch: after warm-up and compilation
        "val_acc": round(h[-1]["val_acc"], 4),
        "train_loss": [round(m["train_loss"], 4) for m in h],
        "wall_s": round(wall, 1),
    }
    print(
        f"[{name}] {row['images_per_s']} images/s (by epoch {row['images_per_s_by_epoch']}), "
        f"val_acc {row['val_acc']}, {row['wall_s']} s",
        flush=True,
    )
    return row, result.weights


def compare_cpu_gpu(weights: bytes, images: torch.Tensor) -> dict:
    """The trained model's fp32 probabilities on CPU and on the GPU (TF32 convs) should agree."""
    model, _ = load_weights(weights)
    cpu = predict(model, images.numpy(), batch_size=256, device="cpu").probs
    gpu = predict(model, images.numpy(), batch_size=256, device="cuda").probs
    return {
        "n": len(images),
        "argmax_agreement": float((cpu.argmax(1) == gpu.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(cpu - gpu).max()),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_nccl_ddp(quick: bool) -> dict:
    """Two ranks, one GPU each, NCCL: both must report the same all-reduced history; rank 0 the weights."""
    if torch.cuda.device_count() < 2:
        msg = f"skipped: {torch.cuda.device_count()} GPU(s); NCCL DDP needs 2"
        print(f"[ddp] {msg}", flush=True)
        return {"status": "skipped", "reason": msg}
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            str(Path(__file__).resolve()),
            "--ddp-worker",
            out,
        ] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return {
                "status": "failed",
                "returncode": proc.returncode,
                "stderr_tail": proc.stderr[-2000:],
            }
        r0, r1 = (json.loads((Path(out) / f"rank{r}.json").read_text()) for r in (0, 1))
    strip = lambda h: [{k: v for k, v in m.items() if k != "images_per_s"} for m in h]  # noqa: E731
    ok = (
        strip(r0["history"]) == strip(r1["history"]) and r0["has_weights"] and not r1["has_weights"]
    )
    row = {
        "status": "ok" if ok else "failed",
        "val_acc": r0["history"][-1]["val_acc"],
        "images_per_s_rank0_clock": r0["history"][-1]["images_per_s"],
        "ranks": [r0, r1],
    }
    print(
        f"[ddp] {row['status']}: val_acc {row['val_acc']}, {row['images_per_s_rank0_clock']:.1f} images/s (2 GPUs)"
    )
    return row


def ddp_worker(out: str, quick: bool) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    s = sizes(quick)
    xtr, ytr = synthetic_frames(s["n_train"], size=s["image_size"], seed=0)
    xva, yva = synthetic_frames(s["n_val"], size=s["image_size"], seed=1)
    cfg = TrainConfig(
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        width=s["width"],
        depth=s["depth"],
        image_size=s["image_size"],
        device="cuda",
    )
    result = train(
        train_loader=PinnedBatches(xtr[rank::world], ytr[rank::world], s["batch_size"], True),
        val_loader=PinnedBatches(xva[rank::world], yva[rank::world], 512, True, drop_last=False),
        classes=CLASSES,
        cfg=cfg,
    )
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {"rank": rank, "history": result.history, "has_weights": result.weights is not None}
        )
    )


ITERATE_CONFIG = """
sim: {{frames_per_clip: 8}}
train: {{device: {device}{train}}}
compute: {{nproc_per_node: {nproc}}}
gate: {{floor: 0.0, margin: -1.0, min_slice_frames: 100000, critical_slices: []}}  # every challenger passes: each deploys
"""


def check_iterate(quick: bool, *, nproc: int = 1) -> dict:
    """`flywheel demo --iterations 2` in a fresh home: two full iterations through Dagster, training on
    `cuda` with `nproc` ranks through the Pipes path (torchrun, NCCL when nproc > 1), the data engine
    on with the simulated labeling team; the second labels its batch with the first champion, so
    evaluation, auto-labeling and shadow scoring all meet the compute device. Returns where each part
    ran, read back from what the runs recorded."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clips, train = (16, ", epochs: 1, width: 8, depth: 1") if quick else (120, "")
    with tempfile.TemporaryDirectory(prefix="flywheel-gpu-check-") as home:
        cfg = Path(home, "flywheel.yaml")
        cfg.write_text(ITERATE_CONFIG.format(device=device, train=train, nproc=nproc)
                       + ("image_size: 32\n" if quick else ""))  # fmt: skip
        env = {**os.environ, "FLYWHEEL_HOME": str(Path(home, "data")), "FLYWHEEL_CONFIG": str(cfg)}
        env.pop("DAGSTER_HOME", None)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "flywheel.cli", "demo", "--iterations", "2", "--clips", str(clips),
                               "--label-budget", "400"], env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
        wall = round(time.perf_counter() - t0, 1)
        if proc.returncode != 0:
            return {"status": "failed", "nproc": nproc, "command": "demo", "stderr": proc.stderr[-3000:]}
        probe = ("import json, dagster as dg; from flywheel.cli import Ctx; from flywheel.deployment import champion;"
                 "obj = Ctx(None, {}); inst = obj.instance();"
                 "md = lambda k: inst.get_latest_materialization_event(dg.AssetKey(k)).asset_materialization.metadata;"
                 "print(json.dumps({'training': md('challenger')['device'].value,"
                 " 'ranks': md('challenger')['ranks (torchrun)'].value,"
                 " 'auto_labels_and_shadow': champion.deployed(obj.store(), obj.settings).scored_on,"
                 " 'labels_scored_on': md('labels')['champion scored on'].value}))")  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return {"status": "failed", "nproc": nproc, "command": "probe", "stderr": proc.stderr[-3000:]}
        where = json.loads(proc.stdout.strip().splitlines()[-1])
        evaluation = sorted(Path(home, "data", "evaluations").rglob("v*.json"))[-1]
        where["evaluation"] = json.loads(evaluation.read_text())["device"]
    return {"status": "ok", "nproc": nproc, "device": device, "demo_wall_s": wall, "ran_on": where}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--ddp-worker", metavar="OUTDIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.quick)
        return 0

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        print(
            "NO CUDA GPU: falling back to CPU (bf16, channels_last, compile and NCCL are not exercised)",
            flush=True,
        )
    report: dict = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count(),
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "quick": args.quick,
        "sizes": sizes(args.quick),
        "runs": [],
        "failures": [],
    }
    print(
        f"torch {report['torch']} cuda {report['cuda']} on {report['device']}; bf16 {report['bf16_supported']}"
    )
    if cuda and not report["bf16_supported"]:
        report["failures"].append("bf16 not supported: the trainer falls back to fp32")

    s = sizes(args.quick)
    data = (
        synthetic_frames(s["n_train"], size=s["image_size"], seed=0),
        synthetic_frames(s["n_val"], size=s["image_size"], seed=1),
    )
    plan = (
        [("eager", False, s["batch_size"]), ("eager_b64", False, 64)]
        if cuda
        else [("eager", False, s["batch_size"])]
    )
    if cuda:
        plan.append(("compiled", True, s["batch_size"]))
    weights = None
    for name, compile_, bs in plan:
        try:
            row, w = run_training(
                name, s=s, data=data, device=device, compile=compile_, batch_size=bs
            )
        except Exception as e:  # recorded as a failure (exit 1); the other runs still report
            print(f"[{name}] FAILED: {e!r}", file=sys.stderr, flush=True)
            report["failures"].append(f"{name}: {e!r}"[:2000])
            continue
        report["runs"].append(row)
        weights = weights or w
        if not row["val_acc"] >= 0.9:  # NaN fails too
            report["failures"].append(f"{name}: val_acc {row['val_acc']} < 0.9 on a separable set")

    if cuda and weights is not None:
        report["cpu_vs_gpu"] = agree = compare_cpu_gpu(weights, data[1][0][:1024])
        print(f"[cpu vs gpu] {agree}")
        if agree["argmax_agreement"] < 0.99 or agree["max_abs_prob_diff"] > 1e-2:
            report["failures"].append(f"CPU and GPU predictions disagree: {agree}")
    if cuda:
        report["ddp"] = check_nccl_ddp(args.quick)
        if report["ddp"]["status"] == "failed":
            report["failures"].append("NCCL DDP failed")
    else:
        report["cpu_vs_gpu"] = report["ddp"] = {"status": "skipped", "reason": "no CUDA GPU"}

    # the flywheel itself on the compute device: one rank, then 2 ranks over NCCL through the Pipes path
    report["iterate"] = it = check_iterate(args.quick)
    print(f"[iterate] {it}", flush=True)
    if it["status"] != "ok":
        report["failures"].append(f"flywheel iterate failed: {it}"[:2000])
    elif cuda and not str(it["ran_on"]["training"]).startswith("cuda"):
        report["failures"].append(f"flywheel iterate did not train on the GPU: {it['ran_on']}")
    if cuda and torch.cuda.device_count() >= 2:
        report["iterate_nccl"] = two = check_iterate(args.quick, nproc=2)
        print(f"[iterate, 2 ranks] {two}", flush=True)
        if two["status"] != "ok" or two["ran_on"]["ranks"] != 2:
            report["failures"].append(f"2-rank NCCL iterate through Pipes failed: {two}"[:2000])
    else:
        report["iterate_nccl"] = {"status": "skipped", "reason": f"{torch.cuda.device_count()} GPU(s); needs 2"}

    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(f"done in {report['wall_s']} s; failures: {report['failures'] or 'none'}")
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu_check.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
