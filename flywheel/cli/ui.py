"""`flywheel ui`: the Dagster webserver and daemon (and Label Studio, if asked) until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from flywheel.cli.base import Ctx, main
from flywheel.config import flywheel_home


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--label-studio", "label_studio", is_flag=True,
              help="Also start Label Studio on 127.0.0.1 for the human queue (installed into its own "
                   "environment on first use); the label_studio_answers sensor syncs with it.")  # fmt: skip
@click.option("--label-studio-port", type=int, default=8080, show_default=True)
@click.pass_obj
def ui(obj: Ctx, host: str, port: int, label_studio: bool, label_studio_port: int):
    """Run the Dagster webserver and daemon (sensors, schedules, run queue) until Ctrl-C.

    \b
    Example: flywheel ui --port 3000 --label-studio
    """
    obj.instance().dispose()  # a fresh home's storage is created here, under the lock, not by dagster dev
    env = dict(os.environ)
    if obj.config:
        env["FLYWHEEL_CONFIG"] = str(Path(obj.config).resolve())
    studio = _start_label_studio(obj, env, label_studio_port) if label_studio else None
    try:
        _run_dagster_dev(env, host, port)
    finally:
        if studio is not None:
            studio.stop()


def _start_label_studio(obj: Ctx, env: dict, port: int):
    """Start Label Studio beside Dagster and point the sensor at it (LABEL_STUDIO_URL and its token)."""
    from flywheel.labeling import labelstudio_server
    from flywheel.labeling.labelstudio_sync import local_files_root
    from flywheel.store import LocalStore

    st, s = obj.store(), obj.settings
    data = flywheel_home() / "labelstudio"
    # what the server may hand out: the queued images alone (S3 stores serve them by presigned URL)
    root = Path(s.labelstudio.document_root) if s.labelstudio.document_root else (
        local_files_root(st) if isinstance(st, LocalStore) else data / "local-files")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    click.echo(f"starting Label Studio (data in {data}; the first start sets up its database, about a minute)")
    server = labelstudio_server.start(data_dir=data, port=port, document_root=root,
                                      exe=labelstudio_server.ensure_installed(echo=click.echo))  # fmt: skip
    env.update(LABEL_STUDIO_URL=server.url, **{s.labelstudio.api_key_env: server.token})
    click.echo(f"Label Studio on {server.url}: log in as {labelstudio_server.USER}, with the password in "
               f"{labelstudio_server.password_file(data)}")  # fmt: skip
    return server


def _run_dagster_dev(env: dict, host: str, port: int) -> None:
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "flywheel.definitions", "-h", host, "-p", str(port)]
    click.echo(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={env['DAGSTER_HOME']}); Ctrl-C stops it")
    # dagster dev must see SIGINT even when this command was started in the background
    # (where the shell makes children ignore SIGINT), so restore the default handler in it.
    proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def stop(signum, _frame):  # Ctrl-C, kill -INT or kill -TERM: let dagster dev stop its webserver and daemon
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        proc.wait(timeout=None)
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=10)
    raise SystemExit(0 if proc.returncode in (0, -signal.SIGINT, 130) else proc.returncode)
