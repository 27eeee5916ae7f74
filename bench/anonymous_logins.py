"""How much anonymous sign-in starts cost the session store (issue 15, item 4).

    .venv/bin/python bench/anonymous_logins.py [count]

Sends `count` (default 100,000) cookie-less `GET /login` through the Flask test client, to
the filesystem store and to a real redis-server on a free loopback port (Debian's
`redis-server`, as the tests use), and prints how many records they left there.
The pending sign-in travels in its own sealed cookie, so the answer should be none.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import redis  # noqa: E402
import responses  # noqa: E402

from app import create_app  # noqa: E402
from conftest import FakeEntra, fast_config  # noqa: E402
from live import wait_for  # noqa: E402


def anonymous_logins(config: dict, count: int) -> float:
    client = create_app(config).test_client()
    started = time.perf_counter()
    for _ in range(count):
        assert client.get("/login").status_code == 302
        client.delete_cookie("signin_pending")  # a new visitor every time
    return time.perf_counter() - started


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeEntra(rsps)
        workdir = Path(tempfile.mkdtemp())
        seconds = anonymous_logins(fast_config(workdir), count)
        files = list((workdir / "sessions").iterdir())
        print(f"filesystem: {count} anonymous /login in {seconds:.1f} s ({count / seconds:.0f}/s): "
              f"{len(files)} records, {sum(f.stat().st_size for f in files)} bytes")

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            wait_for(lambda: _pings(client), timeout=10, what="redis-server")
            seconds = anonymous_logins(fast_config(workdir, SESSION_TYPE="redis",
                                                   REDIS_URL=f"redis://127.0.0.1:{port}/0"), count)
            print(f"redis: {count} anonymous /login in {seconds:.1f} s ({count / seconds:.0f}/s): "
                  f"{client.dbsize()} keys")
        finally:
            server.terminate()
            server.wait()
    return 0


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


if __name__ == "__main__":
    sys.exit(main())
