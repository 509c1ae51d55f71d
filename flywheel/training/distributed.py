"""Train the challenger under torchrun: one process per rank, DDP over NCCL (GPUs) or gloo (CPUs).

    torchrun --nproc_per_node=2 -m flywheel.training.distributed [--config flywheel.yaml] \
        [--set train.epochs=2 ...] [--out result.json]

Every rank reads the same settings and the same dataset version; the shard reader gives each
rank its own slice and `flywheel.training.train` all-reduces the gradients. Rank 0 registers the model
in MLflow (alias `challenger`) and writes the result (what `stages.train_challenger` returns) to
`--out`. `train_challenger_torchrun` starts such a run from Python and returns that result.

Launched by Dagster Pipes (the `challenger` asset), rank 0 also reports through the Pipes channel:
one log line per epoch and the result as a custom message; the MLflow run is tagged with the
Dagster run. A rank that fails writes its error to `$FLYWHEEL_RANK_ERRORS/rank-<r>.json`, so the
step can say which rank failed and why. This module uses `dagster_pipes` (the protocol's small
client library), never Dagster itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from flywheel import stages
from flywheel.config import Settings, load_settings, parse_overrides, quiet_telemetry
from flywheel.store import store_for
from flywheel.tracking import tracker_for

RANK_ERRORS_ENV = "FLYWHEEL_RANK_ERRORS"  # a folder where a failing rank records its error


def rank_from_env() -> tuple[int, int]:
    """(rank, world_size) as torchrun sets them; (0, 1) outside torchrun."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def train_rank(settings: Settings, *, device: str | None = None, log=None, run_tags: dict | None = None,
               progress: bool = False) -> dict:  # fmt: skip
    """This process's share of a DDP training run; rank 0's return value describes the model."""
    rank, world = rank_from_env()
    return stages.train_challenger(
        store_for(settings), settings, tracker_for(settings, run_tags=run_tags), device=device, rank=rank,
        world_size=world, log=log, progress=progress,
    )  # fmt: skip


@contextmanager
def _pipes_channel(rank: int):
    """Rank 0's Dagster Pipes context when a Pipes client launched this process; else None."""
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

    if rank != 0 or DAGSTER_PIPES_CONTEXT_ENV_VAR not in os.environ:
        yield None
        return
    with open_dagster_pipes() as pipes:
        yield pipes


def _record_rank_error(rank: int, error: BaseException) -> None:
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder:
        return
    path = Path(folder) / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    path.write_text(json.dumps({"rank": rank, "error": f"{type(error).__name__}: {line}", "at": time.time(),
                                "traceback": traceback.format_exc()[-8000:]}))  # fmt: skip


def read_rank_errors(folder: Path) -> list[dict]:
    """What the failed ranks of a run recorded (`rank`, `error`, `at`, `traceback`), first failure first:
    the others usually failed because a peer went away."""
    errors = (json.loads(p.read_text()) for p in Path(folder).glob("rank-*.json"))
    return sorted(errors, key=lambda e: (e["at"], e["rank"]))


def main(argv: list[str] | None = None) -> None:
    quiet_telemetry()
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.training.distributed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=os.environ.get("FLYWHEEL_CONFIG"), help="flywheel.yaml")
    parser.add_argument("--settings-json", default=None,
                        help="the whole settings as JSON (what the launching step loaded); instead of --config")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: train.device)")
    parser.add_argument(
        "--out", type=Path, default=None, help="rank 0 writes its result here as JSON"
    )
    args = parser.parse_args(argv)
    if args.settings_json:
        settings = Settings.model_validate(json.loads(args.settings_json))
    else:
        settings = load_settings(args.config, **parse_overrides(args.overrides))
    rank, _ = rank_from_env()
    try:
        with _pipes_channel(rank) as pipes:
            log, tags = None, None
            if pipes is not None:  # epoch lines to the Dagster run log (and this terminal); the MLflow run knows its Dagster run
                def log(line: str) -> None:
                    pipes.log.info(line)
                    print(f"  training: {line}", file=sys.stderr, flush=True)

                tags = {"dagster.run_id": pipes.run_id, "dagster.job": pipes.job_name or ""}
            # a bar of the batches on a terminal (a `flywheel iterate` someone watches), none under a daemon
            result = train_rank(settings, device=args.device, log=log, run_tags=tags, progress=sys.stderr.isatty())
            if pipes is not None:
                pipes.report_custom_message(json.loads(json.dumps(result, default=str)))
    except BaseException as e:
        _record_rank_error(rank, e)
        raise
    if "version" in result and args.out is not None:  # rank 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------- launching from Python


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torchrun_command(
    *, nproc: int, out: Path | None = None, config_path: str | None = None, overrides: dict | None = None,
    device: str | None = None, master_port: int | None = None, master_addr: str = "127.0.0.1",
    settings: Settings | None = None, python: str = sys.executable, standalone: bool = False,
) -> list[str]:  # fmt: skip
    """The torchrun command line of one single-node training run with `nproc` ranks.

    `settings`: passed whole (`--settings-json`), so every rank trains with exactly what the caller
    loaded; else `config_path` and `overrides`. `standalone`: torchrun picks its own rendezvous (in a
    pod); else 127.0.0.1 and a free port here. `python`: the interpreter (in an image, `python`).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if nproc == 1 and not standalone:  # one rank needs no torchrun agent (and its ~2 s start): the process itself
        cmd = [python, "-m", "flywheel.training.distributed"]
    else:
        where = ["--standalone"] if standalone else [
            "--master_addr", master_addr, "--master_port", str(master_port or free_port(master_addr))]  # fmt: skip
        cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *where, "-m", "flywheel.training.distributed"]
    if out is not None:
        cmd += ["--out", str(out)]
    if settings is not None:
        cmd += ["--settings-json", settings.model_dump_json()]
    if config_path:
        cmd += ["--config", str(config_path)]
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML
    if device:
        cmd += ["--device", device]
    return cmd


def rank_env(nproc: int) -> dict[str, str]:
    """Environment for `nproc` ranks on this machine: cores/nproc threads each, gloo over loopback
    (each unless the environment already says otherwise)."""
    return {"GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}  # fmt: skip


def train_challenger_torchrun(
    *, nproc: int, workdir: Path, config_path: str | None = None, overrides: dict | None = None,
    device: str | None = None, env: dict | None = None, timeout: float | None = None,
) -> dict:  # fmt: skip
    """Run `torchrun -m flywheel.training.distributed` with `nproc` ranks and return rank 0's result.

    On CPUs each rank gets cores/nproc threads, and gloo talks over loopback unless
    GLOO_SOCKET_IFNAME is set. Raises RuntimeError with the tail of the output when a rank fails.
    """
    out = Path(workdir) / "distributed-result.json"
    out.unlink(missing_ok=True)
    run_env = {**os.environ, **rank_env(nproc), **(env or {})}
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


def k8s_pod_spec(compute) -> dict:
    """The training pod's spec (Kubernetes camelCase) for `compute` (config.ComputeSettings): the
    container's resource limits and requests, shared memory for DataLoader workers, never restarted
    by Kubernetes (Dagster's RetryPolicy decides), and the service account if set."""
    container = {"volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    if compute.k8s_resources:
        container["resources"] = {"limits": dict(compute.k8s_resources), "requests": dict(compute.k8s_resources)}
    spec = {"containers": [container], "restartPolicy": "Never",
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}  # fmt: skip
    if compute.k8s_service_account:
        spec["serviceAccountName"] = compute.k8s_service_account
    return spec
