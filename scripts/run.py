"""`make run`: serve the app on http://localhost:5000.

With a `.env` (or CLIENT_ID in the environment) the app runs alone, against Microsoft
Entra ID. Without one, the local stand-in for Entra ID and Graph starts first, in this
process, and the app is pointed at it through its settings alone: the app never imports
the stand-in. Ctrl-C, SIGTERM (`kill`) or SIGHUP (the terminal closed) stops both, and the
stand-in removes its temporary CA file. `LOCAL_ENTRA_B2C=1 make run` serves the stand-in as
Azure AD B2C instead (its user flows: sign-up/sign-in, edit profile, password reset).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# How long the app's process gets to exit after a stop signal or Ctrl-C before it is killed.
STOP_GRACE_SECONDS = 10


class StopSignals:
    """SIGTERM and SIGHUP end `make run` the way Ctrl-C does.

    Python's default for them ends this process on the spot: the app's process lives on,
    holding the port, and the stand-in's CA file stays in the temporary directory. Here the
    handler raises nothing (an exception could cut the clean-up short, or lose the app's
    process while Popen is starting it); it passes the signal on to the app's process,
    whose exit ends the wait in `_serve`, and the clean-up after that runs as after Ctrl-C.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received: int | None = None
        self.child: subprocess.Popen | None = None
        self._forwarded_to: subprocess.Popen | None = None
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.received = self.received or signum
        self.forward()

    def forward(self) -> None:
        """Pass the signal received on to the app's process, if it has one and it runs."""
        child = self.child
        if self.received is None or child is None or child.returncode is not None or child is self._forwarded_to:
            return
        self._forwarded_to = child
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(self.received)
        # flask's server dies of either signal at once; whatever does not is killed, so
        # that stopping always ends.
        killer = threading.Timer(STOP_GRACE_SECONDS, _kill, args=(child,))
        killer.daemon = True
        killer.start()

    def exit_code(self, default: int) -> int:
        # 128 + signal number: what a shell reports for a process ended by that signal.
        return 128 + self.received if self.received else default


def _kill(process: subprocess.Popen) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


def main() -> int:
    stop = StopSignals()
    port = os.environ.get("PORT", "5000")
    env = dict(os.environ)
    flask_run = [sys.executable, "-m", "flask", "--app", "app", "run", "--host", "localhost", "--port", port]

    if (ROOT / ".env").is_file() or env.get("CLIENT_ID"):
        print(f"Serving on http://localhost:{port} against Microsoft Entra ID (settings from .env).", flush=True)
        return _serve(flask_run, env, stop)

    from local_entra import USERS, StandIn, b2c

    as_b2c = b2c.requested(env)
    stand_in = StandIn(redirect_uris=[f"http://localhost:{port}/getAToken", f"http://127.0.0.1:{port}/getAToken"],
                       frontchannel_logout_uris=[f"http://localhost:{port}/logout/frontchannel",
                                                 f"http://127.0.0.1:{port}/logout/frontchannel"],
                       b2c=as_b2c)
    try:
        stand_in.start()
        env.update({key: value for key, value in stand_in.settings.items() if isinstance(value, str)})
        names = ", ".join(user["displayName"] for user in USERS)
        product = "Azure AD B2C" if as_b2c else "Microsoft Entra ID"
        flows = f"  user flows: {', '.join(stand_in.user_flows.values())}\n" if as_b2c else ""
        print(
            f"\nNo .env found: using the local stand-in for {product} and Microsoft Graph.\n"
            f"  stand-in sign-in pages: {stand_in.front_url}\n{flows}"
            f"  test users: {names}\n"
            f"Open http://localhost:{port} and click Sign in. Ctrl-C stops everything.\n"
            "To use your own tenant, copy .env.sample to .env and fill it in (see README).\n",
            flush=True,
        )
        return _serve(flask_run, env, stop)
    finally:
        # Only once the app's process has exited: removes the CA file the app trusted.
        stand_in.stop()


def _serve(command: list[str], env: dict, stop: StopSignals) -> int:
    if stop.received:  # stopped while the stand-in was starting: serve nothing
        return stop.exit_code(0)
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    stop.child = process
    stop.forward()  # a signal that came while Popen ran found no process to pass it to
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reached the app too, and it is shutting down; a `kill -INT` of
        # this process alone did not, so it is asked to after a moment. A second Ctrl-C must
        # not cut this short and leave it running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = _wait_then_end(process)
    return stop.exit_code(code)


def _wait_then_end(process: subprocess.Popen) -> int:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(timeout=2)  # flask's server stops within a second of its own Ctrl-C
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(timeout=STOP_GRACE_SECONDS)
    process.kill()
    return process.wait()


if __name__ == "__main__":
    sys.exit(main())
