"""`make bench`: throughput of `/call_downstream_api` against its limit, side by side.

What runs, all on loopback:
* the local stand-in for Entra ID and Graph, in this process (threads), counting requests
  and new TCP connections;
* the app under gunicorn (tests/live.py's AppServer: this repo's gunicorn.conf.py,
  2 workers), once with the sync and once with the gthread worker class;
* the limit (bench/limit_app.py) under the same gunicorn settings: the same Graph call
  with a fixed token, the same template, nothing else;
* wrk (Debian's package), a closed loop of 8 connections, with bench/rotate_cookies.lua
  giving each request the session cookie of the next of 20 signed-in users.

Per worker class: sign in 20 users, warm both servers up, then app, limit, limit, app,
app, limit (ABBA, so drift favours neither) for BENCH_ROUNDS rounds of BENCH_DURATION
seconds each. Prints a table, writes
bench/results/results.json and bench/results/chart.png, and ends with
`throughput ratio app/limit: X.XX` (the median of every round's ratio).

Knobs (environment): BENCH_DURATION (15), BENCH_ROUNDS (3), BENCH_WARMUP (4),
BENCH_USERS (20), BENCH_CONNECTIONS (8), BENCH_CLOSE_EVERY (16), BENCH_WORKER_CLASSES (sync,gthread).
bench/profile_app.py shows where the CPU of a page view goes (cProfile in the workers).
The figures are measurements, never assertions: the machine is small and shared.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import requests  # noqa: E402

from live import AppServer, WebUser, wait_for  # noqa: E402
from local_entra import USERS, StandIn  # noqa: E402

PAGE = "/call_downstream_api"
LUA = BENCH / "rotate_cookies.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")

DURATION = int(os.environ.get("BENCH_DURATION") or 15)
ROUNDS = int(os.environ.get("BENCH_ROUNDS") or 3)  # the median of 3 shrugs off one noisy round
WARMUP = int(os.environ.get("BENCH_WARMUP") or 4)
N_USERS = int(os.environ.get("BENCH_USERS") or 20)
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS") or 8)
# Every Nth request asks for `Connection: close` (see rotate_cookies.lua); 0: never.
CLOSE_EVERY = int(os.environ.get("BENCH_CLOSE_EVERY", "16"))
WORKERS = 2
THREADS = 4  # gthread only; sync has one
WORKER_CLASSES = [c.strip() for c in (os.environ.get("BENCH_WORKER_CLASSES") or "sync,gthread").split(",") if c]
TOKEN_LIFETIME = 3 * 3600  # the limit's fixed token outlives any run

TARGETS = {
    "ratio": 0.85,
    "token_per_1000": 0,
    "discovery_per_1000": 0,
    "graph_connections_per_1000": 2,
    "session_writes_per_view": 0,
    "set_cookie_per_view": 0,
    "cpu_vs_limit": 1.3,
}


# --- the servers ------------------------------------------------------------------------


class GunicornServer(AppServer):
    """AppServer (tests/live.py) that also waits until every worker process is up."""

    def start(self) -> GunicornServer:
        super().start()
        wait_for(lambda: len(self.worker_pids()) == self.workers, timeout=30, what=f"{self.name}'s workers")
        return self

    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid) if self.process else []


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
        return found


def cpu_seconds(pids) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / CLK_TCK


def machine_ticks() -> dict[str, int]:
    """Jiffies of all cores by kind (user, system, idle, iowait, steal...), from /proc/stat."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return dict(zip(names, values, strict=False))


def machine_usage(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Cores busy (all processes), stolen by the hypervisor and idle, between two machine_ticks()."""
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values()) or 1
    busy = total - delta["idle"] - delta["iowait"] - delta["steal"]
    cores = os.cpu_count() or 1
    return {"busy": busy / total, "busy_cores": busy / total * cores, "steal": delta["steal"] / total,
            "iowait": delta["iowait"] / total}


def session_files(directory: Path) -> dict[str, tuple[int, int]]:
    """The session files (cachelib's temporary files, which
    end in its transaction suffix, are not sessions)."""
    found = {}
    if directory.is_dir():
        for entry in os.scandir(directory):
            if entry.is_file() and not entry.name.endswith(".__wz_cache"):
                st = entry.stat()
                found[entry.name] = (st.st_mtime_ns, st.st_size)
    return found


# --- load -------------------------------------------------------------------------------


def run_wrk(url: str, seconds: int, cookie_file: Path) -> dict:
    """One closed-loop run; the Lua script's summary plus wrk's own CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA),
         f"{url}{PAGE}", "--", str(cookie_file), str(CLOSE_EVERY)],
        capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stdout[-2000:]} {result.stderr[-2000:]}")
    stats = json.loads(line.removeprefix("BENCH_JSON "))
    stats["wrk_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return stats


def measured_run(stand_in: StandIn, server: GunicornServer, cookie_file: Path, seconds: int,
                 session_dir: Path | None) -> dict:
    pids = server.worker_pids()
    files_before = session_files(session_dir) if session_dir else {}
    stand_in.reset_counters()
    per_worker_before = [cpu_seconds([pid]) for pid in pids]
    master_before = cpu_seconds([server.process.pid])
    self_before = time.process_time()
    ticks_before = machine_ticks()
    started = time.monotonic()
    stats = run_wrk(server.url, seconds, cookie_file)
    time.sleep(0.3)  # requests that were in flight when wrk stopped finish their Graph call
    elapsed = time.monotonic() - started
    machine = machine_usage(ticks_before, machine_ticks())
    counters = stand_in.counters
    per_worker = [cpu_seconds([pid]) - before for pid, before in zip(pids, per_worker_before, strict=True)]
    worker_cpu = sum(per_worker)
    master_cpu = cpu_seconds([server.process.pid]) - master_before
    standin_cpu = time.process_time() - self_before
    if sorted(server.worker_pids()) != sorted(pids):
        print(f"  warning: {server.name}'s workers changed during the run", flush=True)
    files_after = session_files(session_dir) if session_dir else {}
    written = sum(1 for name, sig in files_after.items() if files_before.get(name) != sig)
    removed = sum(1 for name in files_before if name not in files_after)

    n = max(stats["requests"], 1)
    duration = stats["duration_us"] / 1e6
    errors = (stats["not_ok"] + stats["errors_connect"] + stats["errors_read"] + stats["errors_write"]
              + stats["errors_timeout"])
    return {
        "requests": stats["requests"],
        "duration_s": duration,
        "rps": stats["requests"] / duration,
        "p50_ms": stats["p50_us"] / 1000,
        "p95_ms": stats["p95_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "mean_ms": stats["latency_mean_us"] / 1000,
        "max_ms": stats["latency_max_us"] / 1000,
        "errors": errors,
        "non_200": stats["not_ok"],
        "socket_errors": {k: stats[f"errors_{k}"] for k in ("connect", "read", "write", "timeout")},
        "worker_cpu_ms_per_req": worker_cpu * 1000 / n,
        "worker_cpu_cores": worker_cpu / elapsed,
        # How evenly the workers shared the load (1.0: all on one worker).
        "busiest_worker_share": max(per_worker) / worker_cpu if worker_cpu else 0.0,
        "wrk_cpu_ms_per_req": stats["wrk_cpu_s"] * 1000 / n,
        "wrk_cpu_cores": stats["wrk_cpu_s"] / elapsed,
        "standin_cpu_ms_per_req": standin_cpu * 1000 / n,
        "standin_cpu_cores": standin_cpu / elapsed,
        "master_cpu_cores": master_cpu / elapsed,
        "machine_busy": machine["busy"],
        "machine_steal": machine["steal"],
        # Cores busy with anything but this benchmark's processes: other work on a shared machine
        # (and kernel time not charged to a process).
        "other_cpu_cores": max(0.0, machine["busy_cores"] - (worker_cpu + master_cpu + standin_cpu
                                                             + stats["wrk_cpu_s"]) / elapsed),
        "counters": counters,
        "per_1000": {k: counters.get(k, 0) * 1000 / n for k in
                     ("token", "discovery", "graph", "graph_connections", "idp_connections")},
        "set_cookie_headers": stats["set_cookie_count"],
        "set_cookie_bytes": stats["set_cookie_bytes"],
        "session_files_written": written,
        "session_files_removed": removed,
    }


# --- sign-in ----------------------------------------------------------------------------


def sign_in_users(app: GunicornServer, count: int) -> tuple[list[str], list[float]]:
    """Sign in `count` people (the stand-in's users in turn); their Cookie values and sign-in times."""
    cookies, seconds = [], []
    for i in range(count):
        person = WebUser(app.url)
        started = time.perf_counter()
        response = person.sign_in(USERS[i % len(USERS)], next_path=PAGE)
        seconds.append(time.perf_counter() - started)
        if response.status_code != 302 or response.headers.get("Location") != PAGE:
            raise RuntimeError(f"sign-in {i} failed: {response.status_code} {response.text[:300]}")
        sid = person.http.cookies.get("session")
        if not sid:
            raise RuntimeError(f"sign-in {i} left no session cookie")
        page = person.get(PAGE)
        if page.status_code != 200 or USERS[i % len(USERS)]["displayName"] not in page.text:
            raise RuntimeError(f"user {i} cannot see the page: {page.status_code} {page.text[:300]}")
        cookies.append(f"session={sid}")
    return cookies, seconds


def sample_set_cookie(url: str, cookies: list[str], views_each: int = 3) -> tuple[int, int, int]:
    """(views, Set-Cookie headers, their bytes) over a few page views per user, through requests."""
    views = headers = size = 0
    with requests.Session() as http:
        http.trust_env = False
        for cookie in cookies:
            for _ in range(views_each):
                response = http.get(f"{url}{PAGE}", headers={"Cookie": cookie}, allow_redirects=False, timeout=30)
                http.cookies.clear()
                views += 1
                for name, value in response.raw.headers.items():
                    if name.lower() == "set-cookie":
                        headers += 1
                        size += len(name) + 2 + len(value) + 2
    return views, headers, size


# --- one worker class -------------------------------------------------------------------


def bench_worker_class(stand_in: StandIn, worker_class: str, workdir: Path) -> dict:
    threads = THREADS if worker_class == "gthread" else 1
    user = USERS[0]
    token = stand_in.mint_access_token(user["userPrincipalName"], lifetime=TOKEN_LIFETIME)
    app = GunicornServer(stand_in, workdir / "app", name=f"app-{worker_class}", workers=WORKERS,
                         threads=threads, worker_class=worker_class)
    limit = GunicornServer(stand_in, workdir / "limit", name=f"limit-{worker_class}", workers=WORKERS,
                           threads=threads, worker_class=worker_class, app_spec="bench.limit_app:create_app()",
                           env={"BENCH_ACCESS_TOKEN": token, "BENCH_USER_NAME": user["displayName"],
                                "BENCH_USER_UPN": user["userPrincipalName"]})
    session_dir = workdir / "app" / "sessions"
    result = {"worker_class": worker_class, "workers": WORKERS, "threads": threads, "runs": []}
    print(f"\n== {worker_class}: {WORKERS} workers x {threads} thread(s) ==", flush=True)
    try:
        t0 = time.monotonic()
        app.start()
        limit.start()
        print(f"  servers up in {time.monotonic() - t0:.1f} s", flush=True)

        t0 = time.monotonic()
        cookies, sign_in_seconds = sign_in_users(app, N_USERS)
        store_bytes = sum(size for _, size in session_files(session_dir).values())
        result["sign_in_ms"] = [s * 1000 for s in sign_in_seconds]
        result["sign_in_p50_ms"] = statistics.median(result["sign_in_ms"])
        result["session_files"] = len(session_files(session_dir))
        result["session_store_bytes_per_user"] = store_bytes / N_USERS
        print(f"  {N_USERS} users signed in in {time.monotonic() - t0:.1f} s "
              f"(p50 {result['sign_in_p50_ms']:.0f} ms), {store_bytes / N_USERS:.0f} session bytes each", flush=True)
        cookie_file = workdir / f"cookies-{worker_class}.txt"
        cookie_file.write_text("\n".join(cookies) + "\n")

        views, sc_headers, sc_bytes = sample_set_cookie(app.url, cookies)
        result["set_cookie_sample"] = {"views": views, "headers": sc_headers, "bytes": sc_bytes}
        lviews, lsc_headers, _ = sample_set_cookie(limit.url, cookies[:2], views_each=2)
        if lsc_headers:
            print(f"  note: the limit sent {lsc_headers} Set-Cookie headers in {lviews} views", flush=True)

        for server in (app, limit):
            warm = run_wrk(server.url, WARMUP, cookie_file)
            print(f"  warm-up {server.name}: {warm['requests'] / (warm['duration_us'] / 1e6):.0f} req/s, "
                  f"{warm['not_ok']} non-200", flush=True)

        for round_no in range(1, ROUNDS + 1):
            # ABBA order (app, limit, limit, app, ...): a machine that slows down or speeds
            # up during the run then favours neither side.
            order = (("app", app), ("limit", limit))
            for target, server in (order if round_no % 2 else order[::-1]):
                run = measured_run(stand_in, server, cookie_file, DURATION,
                                   session_dir if target == "app" else None)
                run.update(round=round_no, target=target)
                result["runs"].append(run)
                print(f"  round {round_no} {target:5}: {run['rps']:7.1f} req/s  p95 {run['p95_ms']:6.1f} ms  "
                      f"errors {run['errors']}  worker CPU {run['worker_cpu_ms_per_req']:.2f} ms/req "
                      f"(busiest {run['busiest_worker_share']:.0%})  "
                      f"machine {run['machine_busy']:.0%} busy, other {run['other_cpu_cores']:.2f} cores, "
                      f"steal {run['machine_steal']:.0%}", flush=True)
        result["session_store_bytes_per_user_after"] = (
            sum(size for _, size in session_files(session_dir).values()) / N_USERS)
    finally:
        app.stop()
        limit.stop()

    ratios = []
    for round_no in range(1, ROUNDS + 1):
        a = next(r for r in result["runs"] if r["round"] == round_no and r["target"] == "app")
        b = next(r for r in result["runs"] if r["round"] == round_no and r["target"] == "limit")
        ratios.append({"round": round_no, "ratio": a["rps"] / b["rps"],
                       "cpu_ratio": a["worker_cpu_ms_per_req"] / b["worker_cpu_ms_per_req"]})
    result["ratios"] = ratios
    result["median_ratio"] = statistics.median(r["ratio"] for r in ratios)
    result["median_cpu_ratio"] = statistics.median(r["cpu_ratio"] for r in ratios)
    result["app_totals"] = totals([r for r in result["runs"] if r["target"] == "app"])
    result["limit_totals"] = totals([r for r in result["runs"] if r["target"] == "limit"])
    return result


def totals(runs: list[dict]) -> dict:
    n = sum(r["requests"] for r in runs) or 1
    counters = {k: sum(r["counters"].get(k, 0) for r in runs)
                for k in ("token", "discovery", "graph", "graph_connections")}
    return {
        "page_views": n,
        "per_1000": {k: v * 1000 / n for k, v in counters.items()},
        "counters": counters,
        "set_cookie_headers_per_view": sum(r["set_cookie_headers"] for r in runs) / n,
        "set_cookie_bytes_per_view": sum(r["set_cookie_bytes"] for r in runs) / n,
        "session_files_written": sum(r["session_files_written"] for r in runs),
        "session_writes_per_view": sum(r["session_files_written"] for r in runs) / n,
        "errors": sum(r["errors"] for r in runs),
    }


# --- report -----------------------------------------------------------------------------


def print_report(results: dict) -> None:
    out = []
    w = out.append
    w("")
    w(f"GET {PAGE}: {CONNECTIONS} connections, closed loop, {DURATION} s per run, {ROUNDS} rounds, "
      f"{N_USERS} signed-in users, {os.cpu_count()} cores (shared with the stand-in and wrk)")
    w(f"wrk -t1 -c{CONNECTIONS}, one session cookie after another, Connection: close on every "
      f"{CLOSE_EVERY}th request; gunicorn {WORKERS} workers (gthread: {THREADS} threads), this repo's gunicorn.conf.py")
    header = (f"{'class':8} {'rd':>2} {'target':6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
              f"{'errors':>6} {'wkr CPU':>8} {'stand-in':>8} {'wrk CPU':>8} {'machine':>7} {'other':>6}")
    w(header)
    w(f"{'':8} {'':>2} {'':6} {'':>7} {'':>7} {'':>7} {'':>7} {'':>6} {'ms/req':>8} {'ms/req':>8} "
      f"{'ms/req':>8} {'busy':>7} {'cores':>6}")
    w("-" * len(header))
    for cls in results["classes"]:
        for r in cls["runs"]:
            w(f"{cls['worker_class']:8} {r['round']:>2} {r['target']:6} {r['rps']:7.1f} {r['p50_ms']:7.1f} "
              f"{r['p95_ms']:7.1f} {r['p99_ms']:7.1f} {r['errors']:>6} {r['worker_cpu_ms_per_req']:8.2f} "
              f"{r['standin_cpu_ms_per_req']:8.2f} {r['wrk_cpu_ms_per_req']:8.3f} {r['machine_busy']:7.0%} "
              f"{r['other_cpu_cores']:6.2f}")
    w("(wkr CPU: the 2 gunicorn workers' utime+stime; stand-in: this process, which serves Graph and the IdP;")
    w(" wrk CPU: the load generator itself; machine busy: all cores, from /proc/stat; other: cores busy with")
    w(" anything else, i.e. other work on this shared machine)")
    w("")
    w(f"{'class':8} {'round':>5} {'app/limit req/s':>15} {'app/limit CPU per req':>22}")
    for cls in results["classes"]:
        for r in cls["ratios"]:
            w(f"{cls['worker_class']:8} {r['round']:>5} {r['ratio']:15.2f} {r['cpu_ratio']:22.2f}")
        w(f"{cls['worker_class']:8} {'median':>5} {cls['median_ratio']:15.2f} {cls['median_cpu_ratio']:22.2f}")
    w("")
    w(f"Per 1000 steady-state page views (all measured runs)   {'token':>6} {'discovery':>9} {'graph':>7} "
      f"{'new Graph TCP':>13}")
    for cls in results["classes"]:
        for name in ("app", "limit"):
            p = cls[f"{name}_totals"]["per_1000"]
            w(f"  {cls['worker_class']:8} {name:6} ({cls[f'{name}_totals']['page_views']:>6} views)"
              f"{'':>21} {p['token']:6.2f} {p['discovery']:9.2f} {p['graph']:7.1f} {p['graph_connections']:13.2f}")
    w("")
    for cls in results["classes"]:
        t = cls["app_totals"]
        sample = cls["set_cookie_sample"]
        w(f"  {cls['worker_class']:8} session store: {cls['session_store_bytes_per_user']:.0f} bytes per signed-in "
          f"user ({cls['session_files']} files); session files written during load: {t['session_files_written']} "
          f"({t['session_writes_per_view']:.4f} per view)")
        w(f"  {cls['worker_class']:8} Set-Cookie per page view: {t['set_cookie_headers_per_view']:.4f} headers, "
          f"{t['set_cookie_bytes_per_view']:.2f} bytes (wrk, all views); sample through requests: "
          f"{sample['headers']} headers, {sample['bytes']} bytes in {sample['views']} views")
        w(f"  {cls['worker_class']:8} sign-in round trip (login, picker, callback): "
          f"p50 {cls['sign_in_p50_ms']:.0f} ms, max {max(cls['sign_in_ms']):.0f} ms")
    w("")
    w("Targets (measured, not asserted):")
    for line in results["target_report"]:
        w(f"  {line}")
    w("")
    for cls in results["classes"]:
        w(f"{cls['worker_class']} median throughput ratio app/limit: {cls['median_ratio']:.2f}")
    w(f"wall time: {results['wall_seconds']:.0f} s; results: {RESULTS / 'results.json'}, {RESULTS / 'chart.png'}")
    w(f"throughput ratio app/limit: {results['median_ratio']:.2f}")
    print("\n".join(out), flush=True)


def target_report(results: dict) -> list[str]:
    lines = []

    def check(ok: bool, text: str):
        lines.append(f"[{'met ' if ok else 'MISS'}] {text}")

    for cls in results["classes"]:
        c, t = cls["worker_class"], cls["app_totals"]
        check(cls["median_ratio"] >= TARGETS["ratio"],
              f"{c}: throughput ratio {cls['median_ratio']:.2f} >= {TARGETS['ratio']}")
        check(t["per_1000"]["token"] <= TARGETS["token_per_1000"] and
              t["per_1000"]["discovery"] <= TARGETS["discovery_per_1000"],
              f"{c}: token {t['per_1000']['token']:.2f} and discovery {t['per_1000']['discovery']:.2f} per 1000 = 0")
        check(t["per_1000"]["graph_connections"] <= TARGETS["graph_connections_per_1000"],
              f"{c}: new Graph TCP connections {t['per_1000']['graph_connections']:.2f} per 1000 <= 2")
        check(t["session_files_written"] == 0 and t["set_cookie_headers_per_view"] == 0,
              f"{c}: session writes {t['session_files_written']} and Set-Cookie {t['set_cookie_headers_per_view']:.4f}"
              " per view = 0")
        check(cls["median_cpu_ratio"] <= TARGETS["cpu_vs_limit"],
              f"{c}: worker CPU per view {cls['median_cpu_ratio']:.2f} x the limit's <= {TARGETS['cpu_vs_limit']}")
    return lines


def write_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, app_rps, limit_rps, app_p95, limit_p95 = [], [], [], [], []
    for cls in results["classes"]:
        for r in range(1, ROUNDS + 1):
            a = next(x for x in cls["runs"] if x["round"] == r and x["target"] == "app")
            b = next(x for x in cls["runs"] if x["round"] == r and x["target"] == "limit")
            labels.append(f"{cls['worker_class']}\nround {r}")
            app_rps.append(a["rps"])
            limit_rps.append(b["rps"])
            app_p95.append(a["p95_ms"])
            limit_p95.append(b["p95_ms"])
    xs = range(len(labels))
    width = 0.38
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, app_v, limit_v, title, unit in ((ax1, app_rps, limit_rps, "Throughput", "requests/s"),
                                            (ax2, app_p95, limit_p95, "Latency p95", "ms")):
        ax.bar([x - width / 2 for x in xs], app_v, width, label="app", color="#2f6fb0")
        ax.bar([x + width / 2 for x in xs], limit_v, width, label="limit", color="#b0b0b0")
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.set_ylim(0, max(app_v + limit_v) * 1.2)  # room for the legend and the ratios
        ax.legend(loc="upper left", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    for x, a, b in zip(xs, app_rps, limit_rps, strict=True):
        ax1.annotate(f"{a / b:.2f}", (x, max(a, b)), textcoords="offset points", xytext=(0, 3),
                     ha="center", fontsize=8)
    fig.suptitle(f"GET {PAGE}, {CONNECTIONS} connections, {DURATION} s runs — "
                 f"throughput ratio app/limit {results['median_ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def environment() -> dict:
    def output(*command) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False, cwd=ROOT)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return ""

    from importlib.metadata import version

    return {"python": sys.version.split()[0], "gunicorn": version("gunicorn"), "flask": version("flask"),
            "wrk": output("wrk", "--version"), "commit": output("git", "rev-parse", "--short", "HEAD"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main() -> int:
    if shutil.which("wrk") is None:
        print("make bench needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    started = time.monotonic()
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=RESULTS))
    results = {"page": PAGE, "duration_s": DURATION, "rounds": ROUNDS, "users": N_USERS,
               "connections": CONNECTIONS, "close_every": CLOSE_EVERY, "warmup_s": WARMUP,
               "cpu_count": os.cpu_count(), "environment": environment(), "classes": []}
    try:
        with StandIn(testing=True) as stand_in:
            print(f"stand-in: idp {stand_in.idp_url}, graph {stand_in.graph_url}", flush=True)
            for worker_class in WORKER_CLASSES:
                results["classes"].append(bench_worker_class(stand_in, worker_class, workdir / worker_class))
    except BaseException:
        print(f"(server logs kept in {workdir})", file=sys.stderr)
        raise
    results["median_ratio"] = statistics.median(
        r["ratio"] for cls in results["classes"] for r in cls["ratios"])
    results["wall_seconds"] = time.monotonic() - started
    results["target_report"] = target_report(results)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    write_chart(results, RESULTS / "chart.png")
    shutil.rmtree(workdir, ignore_errors=True)
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
