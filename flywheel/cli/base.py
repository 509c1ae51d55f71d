"""What every command shares: the settings and store of the invocation (`Ctx`), the Dagster home and
instance, the command group `main`, and how a command is spelled where the user stands."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import click

from flywheel.config import ConfigError, Settings, flywheel_home, load_settings, quiet_telemetry

quiet_telemetry()
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
# In-process runs log every event to the instance (the UI shows them); the terminal stays quiet and
# the CLI reports failures itself (a gate that keeps the champion is a normal outcome, not an error).
# Dagster's console logger stays quiet (its failure events carry whole stack traces; the command says what
# failed in one line); the runs' own lines reach the terminal through assets/ui.py's `say`.
RUN_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# The UI lists a job's runs by job name and this tag (repository @ code location; `flywheel ui` loads the
# module flywheel.definitions, so that is the location's name): runs executed here carry it too, so
# they show under their job like runs launched from the UI.
UI_ORIGIN_TAG = {".dagster/repository": "__repository__@flywheel.definitions"}


def cli_run_tags() -> dict[str, str]:
    """Tags of a run this command executes in process: its process (recovery) and its place in the UI."""
    from flywheel.recovery import process_tags

    return {**process_tags(), **UI_ORIGIN_TAG}


class Ctx:
    def __init__(self, config: str | None, overrides: dict):
        self.config = config
        self.overrides = overrides
        try:
            self.settings: Settings = load_settings(config, **overrides)
        except ConfigError as e:
            raise click.ClickException(str(e)) from None

    def with_overrides(self, **more) -> Ctx:
        return Ctx(self.config, {**self.overrides, **more})

    def store(self):
        from flywheel.store import store_for

        return store_for(self.settings)

    def definitions(self):
        from flywheel.definitions import build_definitions

        return build_definitions(self.settings, config_path=self.config, overrides=self.overrides)

    def instance(self):
        import dagster as dg

        from flywheel.recovery import created_once

        home = prepare_dagster_home()
        # The first open creates the SQLite schemas; two commands on a fresh home must not both do it.
        with created_once(home / "instance"):
            return dg.DagsterInstance.get()


def prepare_dagster_home() -> Path:
    """`$DAGSTER_HOME` if set (production profiles), else `$FLYWHEEL_HOME/dagster` with our dagster.yaml."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = flywheel_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if PROJECT_DAGSTER_YAML.exists() and (
        not target.exists() or target.read_bytes() != PROJECT_DAGSTER_YAML.read_bytes()
    ):
        # Copied to a temporary name and renamed: another command may be reading it right now.
        tmp = home / f".dagster.yaml.{os.getpid()}.tmp"
        shutil.copyfile(PROJECT_DAGSTER_YAML, tmp)
        os.replace(tmp, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def fail_orphaned_runs(instance) -> list[str]:
    """Mark failed the runs that a command on this host executed in its own process and left
    unfinished when it was killed: left as they are, they would block every later training run
    (one at a time) and their batch's ingest retry. Returns their run ids."""
    import dagster as dg

    from flywheel.recovery import HOST_TAG, PID_TAG, process_gone

    S = dg.DagsterRunStatus
    here = dg.RunsFilter(
        statuses=[S.NOT_STARTED, S.STARTING, S.STARTED], tags={HOST_TAG: socket.gethostname()}
    )
    gone = [run for run in instance.get_runs(here) if process_gone(run.tags)]
    for run in gone:
        why = f"its process (pid {run.tags[PID_TAG]} on this host) is gone: killed or crashed"
        instance.report_run_failed(run, f"flywheel: {why}")
        click.echo(f"note: run {run.run_id} of {run.job_name} was left {run.status.value}; {why}; "
                   "marked it failed", err=True)  # fmt: skip  (stdout may be --json)
    return [run.run_id for run in gone]


class _Main(click.Group):
    """The command group; an S3 endpoint that cannot be reached is one line, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            endpoint = _unreachable_endpoint(e)
            if endpoint is None:
                raise
            raise click.ClickException(
                f"cannot reach the S3 endpoint {endpoint} (store.endpoint_url, else AWS_ENDPOINT_URL): "
                "is the server up and the address right?"
            ) from None


def _unreachable_endpoint(error: BaseException) -> str | None:
    """The scheme://host[:port] of an S3 endpoint that refused or timed out, found in `error`'s chain."""
    from urllib.parse import urlsplit

    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    while error is not None:
        if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
            url = urlsplit(error.kwargs.get("endpoint_url", ""))
            return f"{url.scheme}://{url.netloc}"
        error = error.__cause__ or error.__context__
    return None


# The demo's training budget: a few minutes on a laptop's CPU, 300 steps whatever the dataset's size (a floor of
# 3 passes keeps the later turns' growing datasets at 300). The defaults (BENCHMARKS.md) train longer.
DEMO_BUDGET = {"train.steps": 300, "train.min_passes": 3, "tune.baseline_epochs": 0}
# The demo's gate, for its evaluation set (300-1,000 frames, 50-200 per class): at the defaults (tolerance
# 0.05, slices of >= 100 frames, critical classes and conditions failing closed) a slice that small can
# seldom be shown non-inferior, so the defaults keep nearly every good challenger back (bench gate:
# 57 % blocked at 100 frames per slice; demo_default_gate.json: v1 only). At tolerance 0.10 on slices of
# >= 50 frames the same table gives 25 % blocked and 2.8 % false promotions. Used unless the config sets
# the gate.
DEMO_GATE = {"gate.slice_tolerance": 0.10, "gate.min_slice_frames": 50}


def command(rest: str) -> str:
    """A flywheel command as the user types it where they stand: `./dev ui` when they started through
    ./dev (no `flywheel` on their PATH), with FLYWHEEL_HOME when they set one."""
    home = f"FLYWHEEL_HOME={os.environ['FLYWHEEL_HOME']} " if os.environ.get("FLYWHEEL_HOME") else ""
    return f"{home}{os.environ.get('FLYWHEEL_CLI', 'flywheel')} {rest}"


@click.group(cls=_Main)
@click.option("--config", "config", envvar="FLYWHEEL_CONFIG", type=click.Path(dir_okay=False),
              help="flywheel.yaml to use (default: $FLYWHEEL_CONFIG, else ./flywheel.yaml if present).")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, config: str | None):
    """flywheel: a data flywheel for perception models, on Dagster.

    \b
    Example: flywheel demo
    """
    ctx.obj = Ctx(config, {})
    # kill (SIGTERM) stops a command as Ctrl-C does: the run in process is recorded as interrupted
    signal.signal(signal.SIGTERM, signal.default_int_handler)
