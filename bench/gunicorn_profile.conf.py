"""gunicorn.conf.py plus cProfile in every worker (sync worker class: requests run in its main thread).

Used by bench/profile_app.py. Each worker writes BENCH_PROFILE_DIR/<name>-<pid>.pstats when it exits.
"""

import cProfile
import os
import time
from pathlib import Path

_conf = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
exec(compile(_conf.read_text(), str(_conf), "exec"))  # noqa: S102 (this repo's own settings)

_profiles = {}


def post_worker_init(worker):
    profile = cProfile.Profile(time.thread_time)  # CPU time, not time spent waiting
    _profiles[os.getpid()] = profile
    profile.enable()


def worker_exit(server, worker):
    profile = _profiles.pop(os.getpid(), None)
    if profile is not None:
        profile.disable()
        directory = Path(os.environ["BENCH_PROFILE_DIR"])
        directory.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(directory / f"{os.environ.get('BENCH_PROFILE_NAME', 'app')}-{os.getpid()}.pstats")
