"""`make run`: serve the app on http://localhost:5000.

With a `.env` (or CLIENT_ID in the environment) the app runs alone, against Microsoft
Entra ID. Without one, the local stand-in for Entra ID and Graph starts first, in this
process, and the app is pointed at it through its settings alone: the app never imports
the stand-in. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    port = os.environ.get("PORT", "5000")
    env = dict(os.environ)
    flask_run = [sys.executable, "-m", "flask", "--app", "app", "run", "--host", "localhost", "--port", port]

    if (ROOT / ".env").is_file() or env.get("CLIENT_ID"):
        print(f"Serving on http://localhost:{port} against Microsoft Entra ID (settings from .env).", flush=True)
        return _serve(flask_run, env)

    from local_entra import USERS, StandIn

    stand_in = StandIn(redirect_uris=[f"http://localhost:{port}/getAToken", f"http://127.0.0.1:{port}/getAToken"])
    stand_in.start()
    env.update({key: value for key, value in stand_in.settings.items() if isinstance(value, str)})
    names = ", ".join(user["displayName"] for user in USERS)
    print(
        "\nNo .env found: using the local stand-in for Microsoft Entra ID and Microsoft Graph.\n"
        f"  stand-in sign-in pages: {stand_in.front_url}\n"
        f"  test users: {names}\n"
        f"Open http://localhost:{port} and click Sign in. Ctrl-C stops everything.\n"
        "To use your own tenant, copy .env.sample to .env and fill it in (see README).\n",
        flush=True,
    )
    try:
        return _serve(flask_run, env)
    finally:
        stand_in.stop()


def _serve(command: list[str], env: dict) -> int:
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the app too; let it finish shutting down
        return process.wait()


if __name__ == "__main__":
    sys.exit(main())
