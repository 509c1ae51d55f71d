"""The production code location: the flywheel's Definitions, run by the executor that
`FLYWHEEL_EXECUTOR` names.

    FLYWHEEL_EXECUTOR   multiprocess (default: steps in processes beside the run) | in_process |
                        celery (steps as tasks on Celery workers) | k8s (steps as Kubernetes jobs)
    DAGSTER_CELERY_BROKER_URL   e.g. pyamqp://user:pass@rabbitmq:5672// or redis://redis:6379/0
    DAGSTER_CELERY_BACKEND      result backend, default rpc:// (RabbitMQ) ; redis://... for Redis
    FLYWHEEL_CELERY_QUEUE       the queue the workers listen on, default `dagster`

Loaded by production/workspace.yaml (webserver, daemon) and, through the run's code pointer, by
every Celery worker, so all of them must see the same file, settings and environment.
"""

from __future__ import annotations

import os

import dagster as dg

from flywheel.definitions import STEP_EXECUTOR, build_definitions

EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")


def celery_config() -> dict:
    """The celery executor's config; the workers' `production/celery.yaml` names the same broker."""
    return {
        "broker": {"env": "DAGSTER_CELERY_BROKER_URL"},
        "backend": os.environ.get("DAGSTER_CELERY_BACKEND", "rpc://"),
        "config_source": {"task_default_queue": os.environ.get("FLYWHEEL_CELERY_QUEUE", "dagster")},
    }


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor named by FLYWHEEL_EXECUTOR; None keeps the flywheel's (multiprocess, steps forked from a
    server that imported the code location once)."""
    name = os.environ.get("FLYWHEEL_EXECUTOR", "multiprocess")
    if name == "multiprocess":
        return None
    if name == "in_process":
        return dg.in_process_executor
    if name == "celery":
        from dagster_celery import celery_executor  # the `prod` extra

        return celery_executor.configured(celery_config())
    if name == "k8s":
        from dagster_k8s import k8s_job_executor  # pip install dagster-k8s==0.29.27

        return k8s_job_executor
    raise ValueError(f"FLYWHEEL_EXECUTOR={name!r} is not one of {EXECUTORS}")


def production_definitions() -> dg.Definitions:
    return build_definitions(config_path=os.environ.get("FLYWHEEL_CONFIG"), executor=executor_from_env() or STEP_EXECUTOR)


defs = production_definitions()
