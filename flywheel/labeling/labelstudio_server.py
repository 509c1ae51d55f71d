"""A local Label Studio server beside the flywheel, on 127.0.0.1 (`flywheel ui --label-studio`).

Label Studio pins its own versions of Django, pydantic and more, so it lives in its own virtual
environment (built once, ~3 minutes, then reused). Its data folder keeps the SQLite database,
the first user and the access token, so only the first start runs its migrations (~1 minute).

The access token: Label Studio 1.23 turns legacy tokens off for new organizations; the server is
started with one created here (`--user-token`, `--enable-legacy-api-token`), which the SDK takes as
its `api_key`. A team's own server can use a personal access token instead.
The queued images are served by Label Studio's local-files storage from `document_root` (by default
the store's `labeling/images/` alone: whatever lies under it, the server can hand out). The password
and the token reach the server through its environment (LABEL_STUDIO_PASSWORD,
LABEL_STUDIO_USER_TOKEN), never its command line, which every user of the machine can read.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = "1.23.2"
# What its environment is built from: sentry-sdk 3 refuses the `send_default_pii` option label-studio 1.23
# passes it at start (the server exits), and label-studio does not bound it.
REQUIREMENTS = (f"label-studio=={VERSION}", "sentry-sdk<3")
USER = "flywheel@localhost"


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    proc: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def default_venv() -> Path:
    """Where the Label Studio environment is built: $FLYWHEEL_LABEL_STUDIO_VENV, else the user's cache."""
    if os.environ.get("FLYWHEEL_LABEL_STUDIO_VENV"):
        return Path(os.environ["FLYWHEEL_LABEL_STUDIO_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "flywheel" / f"label-studio-{VERSION}"


def ensure_installed(venv: Path | None = None, *, echo=print) -> Path:
    """The `label-studio` executable, installing REQUIREMENTS into `venv` on first use.

    Under a lock beside the folder: a second caller waits for the first one's install (CI starts
    it in the background while the tests run); a finished install is marked with its requirements, a
    half one redone, one marked with other requirements brought up to these."""
    venv = venv or default_venv()
    exe, done_mark = venv / "bin" / "label-studio", venv / ".flywheel-installed"
    wanted = " ".join(REQUIREMENTS)

    def installed() -> bool:
        return done_mark.exists() and done_mark.read_text() == wanted

    if installed():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():  # another process installed it while this one waited
            return exe
        if done_mark.exists() and exe.exists():
            echo(f"bringing {venv} up to {wanted}")
        else:
            echo(f"first use: installing label-studio {VERSION} into {venv} (its own environment; about 3 minutes)")
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        done = subprocess.run([*pip, *REQUIREMENTS], capture_output=True, text=True)
        if done.returncode != 0 or not exe.exists():
            raise RuntimeError(f"installing {wanted} into {venv} failed:\n{done.stderr[-2000:]}")
        done_mark.write_text(wanted)
    return exe


def token_for(data_dir: Path) -> str:
    """The server's access token, made on first use and kept (mode 0600) in the data folder."""
    path = data_dir / "flywheel-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def password_for(token: str) -> str:
    """The first user's password, made from the token (the token is the secret either way)."""
    return token[:16]


def password_file(data_dir: Path) -> Path:
    """The first user's password in a file only its owner reads (mode 0600), for a person to log in
    with: the terminal and the run log never show it."""
    path = data_dir / "flywheel-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password_for(token_for(data_dir)) + "\n")
    return path


def start(*, data_dir: Path, port: int, document_root: Path, exe: Path | None = None,
          timeout_s: float = 600.0) -> Server:  # fmt: skip
    """Start Label Studio on 127.0.0.1:`port` and wait until it answers with the token."""
    exe = exe or ensure_installed()
    data_dir.mkdir(parents=True, exist_ok=True)
    token, url = token_for(data_dir), f"http://127.0.0.1:{port}"
    env = {
        # no calls out: Label Studio asks pypi.org for its latest version at every start, and sends usage
        # analytics, unless told not to (the environment can still turn either on)
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        **os.environ,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_PASSWORD": password_for(token),  # the first user's, read by `label-studio start`
        "LABEL_STUDIO_USER_TOKEN": token,
    }
    cmd = [str(exe), "start", "--no-browser", "--data-dir", str(data_dir), "--internal-host", "127.0.0.1",
           "-p", str(port), "--host", url, "--username", USER, "--enable-legacy-api-token"]  # fmt: skip
    log = data_dir / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(url=url, token=token, proc=proc, log=log)
    try:
        wait_ready(server, timeout_s=timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: Server, *, timeout_s: float) -> None:
    """Until the API answers the token (migrations run on a first start), or RuntimeError with the log."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {server.proc.returncode}; its log {server.log}:\n"
                               + server.log.read_text(errors="replace")[-3000:])  # fmt: skip
        try:
            r = requests.get(f"{server.url}/api/projects", headers={"Authorization": f"Token {server.token}"},
                             timeout=10)  # fmt: skip
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    raise RuntimeError(f"Label Studio at {server.url} did not answer within {timeout_s:.0f} s; its log: {server.log}")


if __name__ == "__main__":  # python -m flywheel.labeling.labelstudio_server: build the environment now (needs only Python)
    print(ensure_installed())
