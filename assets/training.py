"""The challenger's training, launched through Dagster Pipes: `torchrun` in a subprocess beside the
step (`compute.launcher: subprocess`, the default) or in a Kubernetes pod (`k8s`). Rank 0 reports
per-epoch lines to the run log and its result as a Pipes message (flywheel/training/distributed.py)."""

from __future__ import annotations

import tempfile

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError

from flywheel import lazy
from flywheel.config import Settings

distributed = lazy.module("flywheel.training.distributed")  # the stages, torch and MLflow, when used


def train_through_pipes(context: dg.AssetExecutionContext, s: Settings, *, device: str) -> dict:
    """What `stages.train_challenger` returns, from rank 0 of a torchrun launched through Pipes."""
    c = s.compute
    if c.launcher == "k8s":
        from dagster_k8s import PipesK8sClient

        command = distributed.torchrun_command(nproc=c.nproc_per_node, settings=s, device=device,
                                               python="python", standalone=True)  # fmt: skip
        invocation = PipesK8sClient().run(context=context, image=c.k8s_image, command=command,
                                          namespace=c.k8s_namespace, base_pod_spec=distributed.k8s_pod_spec(c))  # fmt: skip
        return _result(invocation, c.nproc_per_node)
    with tempfile.TemporaryDirectory(prefix="flywheel-ranks-") as errors:
        command = distributed.torchrun_command(nproc=c.nproc_per_node, settings=s, device=device)
        env = {**distributed.rank_env(c.nproc_per_node), distributed.RANK_ERRORS_ENV: errors}
        try:
            invocation = dg.PipesSubprocessClient().run(context=context, command=command, env=env)
        except DagsterPipesExecutionError as e:
            failed = distributed.read_rank_errors(errors)
            if not failed:
                raise
            first = failed[0]  # the first to fail; the others usually fail because it did
            raise dg.Failure(
                description=f"training rank {first['rank']} of {c.nproc_per_node} failed: {first['error']}",
                metadata={"traceback": dg.MetadataValue.text(first["traceback"]),
                          "failed_ranks": [f["rank"] for f in failed]},
            ) from e  # fmt: skip
    return _result(invocation, c.nproc_per_node)


def _result(invocation, nproc: int) -> dict:
    results = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and "version" in m]
    if not results:
        raise dg.Failure(description=f"torchrun with {nproc} rank(s) ended without rank 0's result")
    return {**results[-1], "ranks": nproc}
