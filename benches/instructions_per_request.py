#!/usr/bin/env python3
"""Instructions per request of sluice on cached answers, counted by callgrind.

`wrk` figures on a shared 2-CPU VM move by a tenth from one run to the next, so a change
worth a few per cent cannot be seen in them. This runs sluice under `valgrind
--tool=callgrind` and counts the user-space instructions it executes for N requests of each
kind, after they are cached: the same binary and inputs give the same counts (within a few
hundred instructions per request), whatever else the machine is doing. Kernel work (the
`send` and `recv`) is not counted, and `memcpy` of a body counts one instruction per byte
(`rep movsb`), so compare a path with itself between two binaries, not paths with each other.

    python3 benches/instructions_per_request.py                    # target/release/sluice
    python3 benches/instructions_per_request.py OLD_BIN NEW_BIN    # both, and NEW / OLD

Requests: `/-/healthz` (the server's own floor), a cached small packument and simple page
(the npm registry and the PyPI index are asked from npm and pip, as in compare.py), and a
cached manifest by tag from a local docker-registry. N (env N, default 1000) requests of
each over 4 keep-alive connections; counters are zeroed before and dumped after each kind.
Everything started is stopped by pid at the end. KEEP=1 keeps the dumps (named by request kind)
for `callgrind_annotate --inclusive=yes`. Needs valgrind (it is on every machine
of this kind) and what compare.py needs for these servers (docker-registry, skopeo).
"""

import glob
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

N = int(os.environ.get("N", "1000"))
CONNECTIONS = 4


def counts(binary, work):
    """{kind: instructions per request} of `binary`."""
    out = os.path.join(work, "callgrind")
    os.makedirs(out, exist_ok=True)
    wrapper = os.path.join(work, "sluice-under-callgrind")
    with open(wrapper, "w") as f:
        # --fair-sched: without it, sluice's threads starve one another under valgrind's
        # one-thread-at-a-time scheduling and it never gets to listen.
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --fair-sched=yes "
                f"--callgrind-out-file={out}/cg.%p {binary} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    b = c.Bench(work)
    c.SLUICE = wrapper
    wait = c.wait_http
    # Starting under valgrind takes seconds, not the fraction compare.py allows.
    c.wait_http = lambda name, proc, port, path, ok=lambda s: s is not None, timeout=60: wait(
        name, proc, port, path, ok, timeout=300)
    try:
        b.start_registry("upstream")
        lay = c.Layout(b.dir("layout"))
        lay.image("small", [lay.random_layer("etc/small.bin", 64 * 1024)])
        c.skopeo_copy(f"oci:{lay.dir}:small",
                      f"docker://127.0.0.1:{b.port('upstream')}/bench/small:v1", push=True)
        pypi = c.pip_index()
        b.start_sluice(c.npm_registry(), pypi if pypi.endswith("/") else pypi + "/")
        port = b.port("sluice")
        pid = b.pid("sluice")
        vpid = max([pid] + c.descendants(pid))  # valgrind itself, or what the shell exec'd
        kinds = {
            "healthz": ({}, "/-/healthz"),
            "packument": ({"Accept": c.NPM_ACCEPT}, f"/npmjs/{c.SMALL_PACKAGE}"),
            "simple page": ({"Accept": c.PIP_ACCEPT}, f"/pypi/simple/{c.SIMPLE_PROJECT}/"),
            "manifest": ({"Accept": "application/vnd.oci.image.manifest.v1+json"},
                         "/v2/bench/small/manifests/v1"),
        }
        for headers, path in kinds.values():
            for _ in range(3):  # fetched, rendered, and its prebuilt head kept
                status, _ = c.http_get(port, path, headers, timeout=300)
                if status != 200:
                    raise SystemExit(f"GET {path}: {status}")
        res = {}
        for kind, (headers, path) in kinds.items():
            subprocess.run(["callgrind_control", "-z", str(vpid)], check=True, capture_output=True)
            conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                     for _ in range(CONNECTIONS)]
            for i in range(N):
                conn = conns[i % CONNECTIONS]
                conn.request("GET", path, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise SystemExit(f"GET {path}: {r.status}")
            for conn in conns:
                conn.close()
            before = set(glob.glob(f"{out}/*"))
            subprocess.run(["callgrind_control", "-d", kind.replace(" ", "-"), str(vpid)],
                           check=True, capture_output=True)
            dumps = []
            for _ in range(100):
                dumps = sorted(set(glob.glob(f"{out}/*")) - before)
                if dumps:
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # the dump is complete once written
            total = 0
            for d in dumps:
                with open(d) as f:
                    for line in f:
                        if line.startswith(("summary:", "totals:")):
                            total = max(total, int(line.split()[1]))
            res[kind] = total / N
        return res
    finally:
        c.stop_all()
        c.STARTED.clear()
        c.wait_http = wait


def main():
    binaries = sys.argv[1:] or [c.SLUICE]
    results = []
    for binary in binaries:
        work = tempfile.mkdtemp(prefix="sluice-instr-")
        try:
            results.append(counts(os.path.abspath(binary), work))
        finally:
            if os.environ.get("KEEP"):
                print(f"callgrind dumps of {binary} kept in {work}/callgrind")
            else:
                shutil.rmtree(work, ignore_errors=True)
    print(f"instructions per request (callgrind, {N} requests each)")
    head = "".join(f"{os.path.basename(b)[:14]:>16}" for b in binaries)
    print(f"{'request':14}{head}" + (f"{'last / first':>14}" if len(binaries) > 1 else ""))
    for kind in results[0]:
        row = "".join(f"{r[kind]:16,.0f}" for r in results)
        ratio = f"{results[-1][kind] / results[0][kind]:14.3f}" if len(binaries) > 1 else ""
        print(f"{kind:14}{row}{ratio}")


if __name__ == "__main__":
    main()
