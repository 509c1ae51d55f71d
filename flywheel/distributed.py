"""Train the challenger under torchrun: one process per rank, DDP over NCCL (GPUs) or gloo (CPUs).

    torchrun --nproc_per_node=2 -m flywheel.distributed [--config flywheel.yaml] \
        [--set train.epochs=2 ...] [--out result.json]

Every rank reads the same settings and the same dataset version; the shard reader gives each
rank its own slice and `flywheel.train` all-reduces the gradients. Rank 0 registers the model
in MLflow (alias `challenger`) and writes the result (what `loop.train_challenger` returns) to
`--out`. `train_challenger_torchrun` starts such a run from Python and returns that result.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from flywheel import loop
from flywheel.config import Settings, load_settings, quiet_telemetry
from flywheel.store import store_for
from flywheel.tracking import tracker_for


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs, values parsed as YAML (`train.epochs=2`, `store.root=s3://b/p`)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def rank_from_env() -> tuple[int, int]:
    """(rank, world_size) as torchrun sets them; (0, 1) outside torchrun."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def train_rank(settings: Settings, *, device: str | None = None) -> dict:
    """This process's share of a DDP training run; rank 0's return value describes the model."""
    rank, world = rank_from_env()
    return loop.train_challenger(
        store_for(settings), settings, tracker_for(settings), device=device, rank=rank, world_size=world
    )


def main(argv: list[str] | None = None) -> None:
    quiet_telemetry()
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.distributed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=os.environ.get("FLYWHEEL_CONFIG"), help="flywheel.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: train.device)")
    parser.add_argument(
        "--out", type=Path, default=None, help="rank 0 writes its result here as JSON"
    )
    args = parser.parse_args(argv)
    settings = load_settings(args.config, **parse_overrides(args.overrides))
    result = train_rank(settings, device=args.device)
    if "version" in result and args.out is not None:  # rank 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------- launching from Python


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torchrun_command(
    *, nproc: int, out: Path, config_path: str | None = None, overrides: dict | None = None,
    device: str | None = None, master_port: int | None = None, master_addr: str = "127.0.0.1",
) -> list[str]:  # fmt: skip
    """The torchrun command line of one single-node training run with `nproc` ranks."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--master_addr", master_addr, "--master_port", str(master_port or free_port(master_addr)),
        "-m", "flywheel.distributed", "--out", str(out),
    ]  # fmt: skip
    if config_path:
        cmd += ["--config", str(config_path)]
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML
    if device:
        cmd += ["--device", device]
    return cmd


def train_challenger_torchrun(
    *, nproc: int, workdir: Path, config_path: str | None = None, overrides: dict | None = None,
    device: str | None = None, env: dict | None = None, timeout: float | None = None,
) -> dict:  # fmt: skip
    """Run `torchrun -m flywheel.distributed` with `nproc` ranks and return rank 0's result.

    On CPUs each rank gets cores/nproc threads, and gloo talks over loopback unless
    GLOO_SOCKET_IFNAME is set. Raises RuntimeError with the tail of the output when a rank fails.
    """
    out = Path(workdir) / "distributed-result.json"
    out.unlink(missing_ok=True)
    run_env = {**os.environ, **(env or {})}
    run_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    run_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = torchrun_command(
        nproc=nproc, out=out, config_path=config_path, overrides=overrides, device=device
    )
    proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"torchrun with {nproc} rank(s) exited with {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    if not out.exists():
        raise RuntimeError(
            f"torchrun finished but rank 0 wrote no result to {out}:\n{proc.stderr[-2000:]}"
        )
    return json.loads(out.read_text())


if __name__ == "__main__":
    main()
