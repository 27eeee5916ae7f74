"""`make run` (scripts/run.py) leaves nothing behind, however it is stopped (issue 15).

run.py serves the app from a `flask run` child process, with the local stand-in in its own
process and the stand-in's throwaway CA in a temporary file. Stopped by `kill` (SIGTERM),
Ctrl-C (SIGINT to the terminal's process group) or a closed terminal (SIGHUP to the group),
it must take the app's process down with it and remove the CA file.

Every port is a free one (the app's PORT and the stand-in's LOCAL_ENTRA_*_PORT), and TMPDIR
is a directory of the test's own, so a developer's `make run` is never in the way and every
temporary file run.py makes can be seen.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from live import ROOT, closed_port, wait_for

pytestmark = pytest.mark.real


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now; held together so that the kernel hands out different ones."""
    reserved = [closed_port() for _ in range(count)]
    for sock, _ in reserved:
        sock.close()
    return [port for _, port in reserved]


class RunPy:
    """scripts/run.py in its own session (so its whole process group can be told apart and
    signalled), with the venv's python, as `make run` starts it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir()
        self.log_path = workdir / "run.log"
        self.port, front, idp, graph = free_ports(4)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("CLIENT_", "AUTHORITY", "OIDC_", "B2C_", "REQUESTS_CA_BUNDLE"))}
        self.env.update({
            "PORT": str(self.port),
            "LOCAL_ENTRA_FRONT_PORT": str(front),
            "LOCAL_ENTRA_IDP_PORT": str(idp),
            "LOCAL_ENTRA_GRAPH_PORT": str(graph),
            "TMPDIR": str(self.tmpdir),
            # Keep the app's key and sessions out of the repository's instance/.
            "SECRET_KEY": "make-run-test-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
            "SESSION_FILE_DIR": str(workdir / "sessions"),
            "PYTHONUNBUFFERED": "1",
        })
        self.process: subprocess.Popen | None = None

    def start(self) -> RunPy:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run.py")], cwd=ROOT,
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

        def app_answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"run.py exited with {self.process.returncode}:\n{self.log()}")
            try:
                return requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(app_answers, timeout=60, what="make run's app to answer")
        return self

    @property
    def group(self) -> int:
        return self.process.pid  # the leader of its own session and process group

    def group_is_gone(self) -> bool:
        try:
            os.killpg(self.group, 0)
        except ProcessLookupError:
            return True
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def front_port(self) -> int:
        return int(re.search(r"stand-in sign-in pages: http://127\.0\.0\.1:(\d+)", self.log()).group(1))

    def kill_everything(self) -> None:
        """Whatever the test found, leave no process of it behind (the finding: the app's)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


@pytest.fixture
def run_py(tmp_path):
    if (ROOT / ".env").is_file():
        pytest.skip("a .env is present: make run would use Microsoft Entra ID, not the stand-in")
    run = RunPy(tmp_path)
    yield run
    run.kill_everything()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.parametrize(("signum", "to_group", "exit_code"), [
    (signal.SIGTERM, False, 128 + signal.SIGTERM),
    (signal.SIGINT, True, None),  # Ctrl-C; the app's exit status is passed on
    (signal.SIGHUP, True, 128 + signal.SIGHUP),
], ids=["kill-TERM-run-py", "ctrl-c", "terminal-closed"])
def test_stopping_make_run_stops_the_app_and_the_stand_in_and_removes_its_temp_files(
        run_py, signum, to_group, exit_code):
    run_py.start()
    front_port = run_py.front_port()
    temp_files = sorted(path.name for path in run_py.tmpdir.iterdir())
    # What there is to clean up: the CA bundle the app was told to trust.
    assert any(name.startswith("local_entra_ca_") for name in temp_files), temp_files

    if to_group:
        os.killpg(run_py.group, signum)
    else:
        os.kill(run_py.process.pid, signum)
    try:
        returncode = run_py.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"run.py did not exit within 30 s of {signum.name}:\n{run_py.log()}")

    # The app's process went with it: nothing left in run.py's process group, nobody on the ports.
    wait_for(run_py.group_is_gone, timeout=10, what="run.py's processes to be gone")
    assert refused(run_py.port), "the app still listens after make run was stopped"
    assert refused(front_port), "the stand-in still listens after make run was stopped"
    assert sorted(path.name for path in run_py.tmpdir.iterdir()) == [], "temporary files left behind"
    if exit_code is not None:  # what a shell reports for a process ended by that signal
        assert returncode == exit_code, run_py.log()
