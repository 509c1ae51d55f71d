"""How the command line runs Dagster: its jobs (`execute`, `run_iteration`, the fresh-data sensor's
ingest runs) and what it says when one fails.

How the command line runs a Dagster job: in its own process (no daemon needed, the terminal sees
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
from typing import TYPE_CHECKING

import click

from flywheel.cli.base import RUN_LOGS, Ctx, cli_run_tags, command, fail_orphaned_runs

if TYPE_CHECKING:
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
    import dagster as dg
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


def run_sensor_once(obj: Ctx) -> list[dict]:
    """One tick of `fresh_fleet_data`, then each requested run executed in process (first, the runs
    that a killed command left unfinished are marked failed, so the sensor retries their batches).
    Per run: `batch_id`, `run_key`, `run_id`, `ok` and, if it failed, `error` (step: first line)."""
    import dagster as dg

    from resources.partitions import fleet_batches

    instance, defs = obj.instance(), obj.definitions()
    fail_orphaned_runs(instance)
    sensor = defs.resolve_sensor_def("fresh_fleet_data")
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
        result = sensor(ctx)
    if isinstance(result, dg.SkipReason):
        click.echo(f"sensor skipped: {result.skip_message}")
        return []
    # Applied here because a direct sensor call does not apply its partition requests.
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(fleet_batches.name, list(req.partition_keys))
    job = defs.resolve_job_def("ingest_batch")
    out = []
    for rr in result.run_requests or []:
        res = execute(
            job,
            instance=instance,
            partition_key=rr.partition_key,
            tags={
                "dagster/run_key": rr.run_key,
                "dagster/sensor_name": sensor.name,
                **cli_run_tags(),
            },
            run_config=RUN_LOGS,
        )
        out.append({"batch_id": rr.partition_key, "run_key": rr.run_key, "run_id": res.run_id,
                    "ok": res.success, "error": None if res.success else _failure(res)})  # fmt: skip
    return out


def _failure(result) -> str:
    """What failed an in-process run, in one line: its failed steps and their errors' first lines."""
    from flywheel.recovery import failure_line

    failed = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    if not failed:
        return f"the run (no step failed; see it in `{command('ui')}`)"
    return "; ".join(failure_line(e.step_key, e.event_specific_data.error) for e in failed)


class Interrupted(click.ClickException):
    """A run stopped by Ctrl-C or a stop signal: exit status 130, as a shell expects."""

    exit_code = 130


def check_run(result, what: str) -> None:
    """Nothing for a successful run; else one line on what failed (a crash: 1; an interruption: 130)."""
    from flywheel.recovery import INTERRUPTED

    if result.success:
        return
    why = _failure(result)
    if INTERRUPTED in why:
        raise Interrupted(f"{what} (run {result.run_id}) was interrupted ({why}); run it again to go on "
                          "(training resumes from its last checkpoint)")  # fmt: skip
    raise click.ClickException(f"{what} (run {result.run_id}) failed in {why}")



def run_iteration(obj: Ctx, *, annotate: bool = False) -> dict:
    """Ingest every pending clip, then run `train_and_deploy`; a failed gate is a normal outcome.

    `annotate`: the simulated labeling team answers the Label Studio queue before training (the demo).
    """
    import dagster as dg

    from flywheel.report import iteration_summary
    from flywheel.tracking import tracker_for
    from jobs import TRAINING_TAGS

    ingested = run_sensor_once(obj.with_overrides(**{"sensor.min_clips": 1}))
    for r in ingested:
        if not r["ok"]:
            raise click.ClickException(
                f"ingest of batch {r['batch_id']} failed in {r['error']} (run {r['run_id']})"
            )
    if annotate:
        from flywheel.cli.demo import answer_and_relabel  # the simulated team (the demo's)

        answer_and_relabel(obj)
    instance, defs = obj.instance(), obj.definitions()
    fail_orphaned_runs(instance)
    busy = instance.get_run_ids(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING], tags=TRAINING_TAGS)
    )
    if busy:
        raise click.ClickException(
            f"a training run is in progress ({busy[0]}); one at a time (if its process died on another "
            f"machine, or was the daemon's, terminate the run in `{command('ui')}` first)"
        )
    result = execute(
        defs.resolve_job_def("train_and_deploy"),
        instance=instance,
        tags={**TRAINING_TAGS, "flywheel/trigger": "cli", **cli_run_tags()},
        run_config=RUN_LOGS,
    )
    check_run(result, "the iteration")  # a crash; a kept champion is a successful run (flywheel/gate=kept)
    summary = iteration_summary(obj.store(), obj.settings, tracker_for(obj.settings))
    auto = auto_label_accuracy(obj.store(), obj.settings, [r["batch_id"] for r in ingested])
    return {**summary, "run_id": result.run_id, "auto_labels": auto}



def auto_label_accuracy(store, settings, batch_ids: list[str]) -> dict:
    """The champion's auto labels of these batches against the clips' hidden ground truth (the
    simulator's): {"compared", "correct", "accuracy"}; accuracy None when nothing compares."""
    from flywheel import layout
    from flywheel.labeling.quality import auto_accuracy_vs_truth

    compared = correct = 0
    if settings.task == "detection":  # box sets: the labels asset shows the auto labels' mAP against the truth
        batch_ids = []
    for b in batch_ids:
        out = auto_accuracy_vs_truth(store.read_parquet(layout.labels_key(b)), store.read_parquet(layout.frames_key(b)),
                                     settings.classes)  # fmt: skip
        compared, correct = compared + out["compared"], correct + out["correct"]
    return {"compared": compared, "correct": correct, "accuracy": correct / compared if compared else None}


def format_summary(s: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    gate = "PASSED" if s["gate_passed"] else f"kept the champion ({s['gate_reason']})"
    auto = s.get("auto_labels") or {}
    autos = f"auto-labels {auto['compared']} at {auto['accuracy']:.1%} correct | " if auto.get("compared") else ""
    if s["fixed_frames"] is None:
        fixed = s["fixed_note"]
    else:  # the same frames every turn: a rise here is a better model, not an easier test
        fixed = (f"{s['metric']} on the fixed held-out set (n={s['fixed_frames']}, frozen from dataset "
                 f"v{s['fixed_from_version']}): deployed {s['deployed'] or '-'} {f(s['fixed_deployed'])} | "
                 f"challenger {f(s['fixed_challenger'])} vs champion {f(s['fixed_champion'])}")  # fmt: skip
    y = s.get("yardstick")
    # a check written before its times were kept has none: the verdict and scores alone
    cost = ("" if not y or y.get("baseline_seconds") is None or y.get("training_seconds") is None
            else f"; {y['baseline_seconds']:.0f} s against the training's {y['training_seconds']:.0f} s")  # fmt: skip
    yardstick = "" if not y else (
        f"\n  yardstick CNN on val: {y['verdict']} (challenger {f(y['challenger'])} vs CNN {f(y['baseline'])}{cost})")
    return (
        f"{autos}dataset v{s['dataset_version']} ({s['frames']} rows, {s['eval_frames']} in the growing "
        f"evaluation set) | {s['metric']}: challenger v{s['challenger_version']} {f(s['challenger'])} vs champion "
        f"{f(s['champion'])} | {s['rare_slice']}: {f(s['challenger_rare'])} vs {f(s['champion_rare'])} | "
        f"gate {gate} | deployed {s['deployed'] or '-'}\n  {fixed}{yardstick}"
    )
