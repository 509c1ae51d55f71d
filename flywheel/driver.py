"""How the command line runs a Dagster job: in its own process (no daemon needed, the terminal sees
the run's log), as a run of the instance that names the code location the UI serves, so the UI can
re-execute it (all steps, or from failure) like a run it launched itself.

`execute_in_process` records runs without a code location: the webserver cannot re-execute those
(it answers `launchPipelineReexecution` with an error). Here the run is created with the origins
the webserver's workspace gives its own runs (`CODE_LOCATION`, the `__repository__` of
`flywheel.definitions`) and then executed in this process with the in-process executor, the way
`execute_in_process` does. The run is tagged `user` with the account that started it (the UI's
"Launched by").

Dagster internals are used for this (the origins, the plan iterator): the version is pinned in
pyproject.toml, and tests/test_reexecution.py re-executes such a run through the webserver.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import dagster as dg

MODULE = "flywheel.definitions"  # the module `flywheel ui` and production/workspace.yaml load
REPOSITORY = "__repository__"  # the repository name Dagster gives a module's Definitions


def code_location() -> str:
    """The code location name the UI's workspace serves the flywheel under: `FLYWHEEL_CODE_LOCATION`,
    else `flywheel.definitions` (what `dagster dev -m flywheel.definitions` and the production
    workspace name it)."""
    return os.environ.get("FLYWHEEL_CODE_LOCATION") or MODULE


def origins(job_name: str):
    """(remote job origin, python job origin) of `job_name` in the flywheel's code location."""
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    cwd = os.getcwd()
    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=MODULE, working_directory=cwd)
    location = ManagedGrpcPythonEnvCodeLocationOrigin(loadable_target_origin=target, location_name=code_location())
    remote = RemoteJobOrigin(RemoteRepositoryOrigin(location, REPOSITORY), job_name)
    python = JobPythonOrigin(job_name, RepositoryPythonOrigin(sys.executable, ModuleCodePointer(MODULE, "defs", cwd)))
    return remote, python


def execute(job_def: dg.JobDefinition, *, instance: dg.DagsterInstance, run_config: Mapping | None = None,
            partition_key: str | None = None, asset_selection: Sequence[dg.AssetKey] | None = None,
            tags: Mapping[str, str] | None = None, user: str | None = None) -> dg.ExecuteInProcessResult:  # fmt: skip
    """Execute `job_def` here, in process, as a run of `instance` that the UI can re-execute; what
    `job_def.execute_in_process(..., raise_on_error=False)` returns."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.execution.api import (
        ExecuteRunWithPlanIterable,
        create_execution_plan,
        job_execution_iterator,
    )
    from dagster._core.execution.context_creation_job import (
        PlanOrchestrationContextManager,
        orchestration_context_event_generator,
    )
    from dagster._core.execution.execute_in_process import merge_run_tags

    selection = list(asset_selection or [])
    job = job_def.as_ephemeral_job(resource_defs={}, input_values={}, asset_selection=selection or None)
    if partition_key and job.partitions_def:
        with partition_loading_context(dynamic_partitions_store=instance) as ctx:
            job.validate_partition_key(partition_key=partition_key, selected_asset_keys=set(selection), context=ctx)
    run_config = dict(run_config or {})
    wrapped = InMemoryJob(job)
    plan = create_execution_plan(wrapped, run_config=run_config,
                                 instance_ref=instance.get_ref() if instance.is_persistent else None)  # fmt: skip
    run_tags = merge_run_tags(job_def=job_def, partition_key=partition_key, tags=dict(tags or {}),
                              asset_selection=selection, instance=instance, run_config=run_config)  # fmt: skip
    if user:
        run_tags = {**run_tags, "user": user}  # the UI's "Launched by"
    remote, python = origins(job_def.name)
    run = instance.create_run_for_job(
        job_def=job, run_config=run_config, tags={**job.run_tags, **run_tags},
        asset_selection=frozenset(selection) or None, execution_plan=plan,
        remote_job_origin=remote, job_code_origin=python,
    )  # fmt: skip
    output: dict = {}
    events = list(ExecuteRunWithPlanIterable(
        execution_plan=plan, iterator=job_execution_iterator,
        execution_context_manager=PlanOrchestrationContextManager(
            context_event_generator=orchestration_context_event_generator, job=wrapped, execution_plan=plan,
            dagster_run=run, instance=instance, run_config=run_config, executor_defs=None,
            output_capture=output, raise_on_error=False,
        ),
    ))  # fmt: skip
    return dg.ExecuteInProcessResult(job_def=job, event_list=events, dagster_run=instance.get_run_by_id(run.run_id),
                                     output_capture=output)  # fmt: skip
