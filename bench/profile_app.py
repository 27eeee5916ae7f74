"""Where a page view's CPU goes: cProfile in the gunicorn workers of the app and the limit.

    .venv/bin/python bench/profile_app.py [seconds] [target ...]

Targets: app, limit (default both). Runs the same set-up as `make bench` (stand-in, 2 sync
workers, signed-in users, wrk with rotating cookies) with bench/gunicorn_profile.conf.py,
then prints the functions with the most time (cumulative and own) per page view. cProfile
slows Python code down, so compare shares, not absolute figures, with `make bench`.
"""

from __future__ import annotations

import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

USERS = run.USERS


def profile(target: str, seconds: int, workdir: Path, stand_in) -> None:
    prof_dir = workdir / "profiles"
    env = {"BENCH_PROFILE_DIR": str(prof_dir), "BENCH_PROFILE_NAME": target}
    if target == "limit":
        user = USERS[0]
        env.update(BENCH_ACCESS_TOKEN=stand_in.mint_access_token(user["userPrincipalName"], lifetime=3600),
                   BENCH_USER_NAME=user["displayName"], BENCH_USER_UPN=user["userPrincipalName"])
    server = run.GunicornServer(stand_in, workdir / target, name=f"profile-{target}", workers=run.WORKERS,
                                threads=1, worker_class="sync", env=env,
                                app_spec="app:create_app()" if target == "app" else "bench.limit_app:create_app()",
                                config=run.BENCH / "gunicorn_profile.conf.py")
    server.start()
    try:
        if target == "app":
            cookies, _ = run.sign_in_users(server, run.N_USERS)
        else:
            cookies = ["session=none"]
        cookie_file = workdir / f"cookies-{target}.txt"
        cookie_file.write_text("\n".join(cookies) + "\n")
        stats = run.run_wrk(server.url, seconds, cookie_file)
    finally:
        server.stop()
    files = sorted(str(p) for p in prof_dir.glob(f"{target}-*.pstats"))
    if not files:
        print(f"{target}: no profile written")
        return
    combined = pstats.Stats(*files)
    views = stats["requests"]
    total = combined.total_tt
    print(f"\n===== {target}: {views} page views in {seconds} s under cProfile; "
          f"{total * 1000 / max(views, 1):.2f} ms of profiled CPU per view =====")
    combined.sort_stats("cumulative").print_stats(60)
    combined.print_callers("find_spec|getproxies_environment|_get_protocol_attrs")
    combined.sort_stats("tottime").print_stats(30)


def main() -> int:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 10
    targets = [a for a in sys.argv[1:] if not a.isdigit()] or ["app", "limit"]
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="profile-", dir=run.RESULTS))
    with run.StandIn(testing=True) as stand_in:
        for target in targets:
            profile(target, seconds, workdir, stand_in)
    print(f"(profiles in {workdir / 'profiles'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
