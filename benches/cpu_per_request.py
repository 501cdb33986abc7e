#!/usr/bin/env python3
"""CPU time per request of sluice and nginx serving the same cached documents.

`benches/compare` measures requests per second; on a 2-CPU machine that figure also depends
on how the scheduler interleaves wrk's threads with the server's. This reads the CPU time
each server process (and wrk) used from /proc during each wrk run and prints it per request,
user and system apart: what a request costs the server, whatever the scheduling.

    python3 benches/cpu_per_request.py          # ROUNDS=3 by default; needs target/release/sluice

It starts the same servers as compare.py (the OCI upstream, nginx, sluice with the npm and
PyPI upstreams asked from npm and pip), warms a packument and a simple page through sluice,
gives nginx a file of the same bytes, and stops everything it started at the end.
"""

import os
import resource
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = 4


def cpu_ticks(pids):
    """User and system clock ticks used so far by `pids`."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def main():
    work = tempfile.mkdtemp(prefix="sluice-cpu-")
    b = c.Bench(work)
    try:
        b.start_registry("upstream")
        b.start_nginx()
        pypi = c.pip_index()
        b.start_sluice(c.npm_registry(), pypi if pypi.endswith("/") else pypi + "/")
        port = b.port("sluice")
        docs = {
            "packument": ({"Accept": c.NPM_ACCEPT}, f"/npmjs/{c.SMALL_PACKAGE}"),
            "simple page": ({"Accept": c.PIP_ACCEPT}, f"/pypi/simple/{c.SIMPLE_PROJECT}/"),
        }
        for i, (headers, path) in enumerate(docs.values()):
            status, body = c.http_get(port, path, headers, timeout=120)
            if status != 200:
                raise SystemExit(f"GET {path} through sluice: {status}")
            with open(os.path.join(b.www, f"doc{i}"), "wb") as f:
                f.write(body)
        tick = os.sysconf("SC_CLK_TCK")
        print("server  document      bytes    req/s   server user µs  server sys µs   wrk user µs  wrk sys µs")
        for _ in range(ROUNDS):
            for i, (doc, (headers, path)) in enumerate(docs.items()):
                for server in ("sluice", "nginx"):
                    proc = b.srv[server][0]
                    pids = [proc.pid] + c.descendants(proc.pid)
                    url = (f"http://127.0.0.1:{port}{path}" if server == "sluice"
                           else f"http://127.0.0.1:{b.port('nginx')}/doc{i}")
                    argv = ["wrk", "-t2", "-c32", f"-d{SECONDS}s"]
                    for k, v in headers.items():
                        argv += ["-H", f"{k}: {v}"]
                    c.settle()
                    before, wrk_before = cpu_ticks(pids), resource.getrusage(resource.RUSAGE_CHILDREN)
                    out = c.run(argv + [url], timeout=60).stdout
                    after, wrk_after = cpu_ticks(pids), resource.getrusage(resource.RUSAGE_CHILDREN)
                    done = int(next(l for l in out.splitlines() if "requests in" in l).split()[0])
                    per = lambda secs: secs / done * 1e6  # noqa: E731
                    size = os.path.getsize(os.path.join(b.www, f"doc{i}"))
                    print(f"{server:7} {doc:12} {size:6} {done / SECONDS:8.0f} "
                          f"{per((after[0] - before[0]) / tick):15.2f} {per((after[1] - before[1]) / tick):14.2f} "
                          f"{per(wrk_after.ru_utime - wrk_before.ru_utime):13.2f} "
                          f"{per(wrk_after.ru_stime - wrk_before.ru_stime):11.2f}", flush=True)
    finally:
        c.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
