#!/usr/bin/env python3
"""Side-by-side benchmark of sluice and the peer proxies (SPEC section 7), one run.

Started by benches/compare (which installs the tools and builds sluice). Starts on free
loopback ports, each with its own temp dir: a Debian docker-registry as the OCI upstream,
a second docker-registry in proxy mode (CNCF distribution pull-through cache), nginx
serving the same files statically, Verdaccio 5, devpi-server, proxpi and sluice; runs the
same workloads against each; prints a table and writes it as JSON and markdown under
benches/results/. Every process started here is stopped by pid, also on Ctrl-C or error.

Only loopback is loaded. The npm registry and the PyPI index that Verdaccio, devpi,
proxpi and sluice proxy are asked from npm and pip at run time.

Environment: QUICK=1 (small files, wrk -d2s, no live installs), SKIP_LIVE=1 (no npm ci /
pip install), WRK_DURATION, LOAD_CLIENTS, LOAD_MB, LOAD_TIMEOUT, RESULTS_DIR, KEEP_WORK=1,
ONLY=copy,live,blob,docs,load (a subset of the workloads, for working on one of them; the
results then go to RESULTS_DIR or a temp dir, never over a full run's files), ISOLATE=0 (no
client-on-its-own-CPU placement; see PLACEMENTS).
`python3 benches/compare.py --report FILE.json` renders a saved run's markdown again.
"""

import asyncio
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.environ.get("BENCH_TOOLS", os.path.join(ROOT, "target", "bench-tools"))
VERDACCIO = os.environ.get("VERDACCIO_BIN", "")
PEERS_VENV = os.environ.get(
    "PEERS_VENV", os.path.join(TOOLS, "pypi-peers")
)
SLUICE = os.path.join(ROOT, "target", "release", "sluice")

QUICK = os.environ.get("QUICK") == "1"
SKIP_LIVE = QUICK or os.environ.get("SKIP_LIVE") == "1"
MIB = 1 << 20
BIG_LAYER = (16 if QUICK else 200) * MIB
OTHER_LAYERS = [2 * MIB, 1 * MIB] if QUICK else [30 * MIB, 15 * MIB]
WRK_DURATION = os.environ.get("WRK_DURATION", "2s" if QUICK else "5s")
BLOB_RUNS = 1 if QUICK else 7
# wrk runs of sluice and of nginx per document and placement, alternating (an even count:
# each goes first equally often). One wrk run's sluice/nginx ratio has spread ~7.5% on a
# 2-CPU VM (46 paired rounds of the committed runs); the median of 6 narrows the ratio's
# spread to ~3.5%. The several-MB packument, which has no target, gets LARGE_DOC_ROUNDS.
DOC_ROUNDS = 1 if QUICK else 6
LARGE_DOC_ROUNDS = 1 if QUICK else 2
COPY_RUNS = 1 if QUICK else 7  # skopeo copies: median of this many (distinct images when cold)
LOAD_CLIENTS = int(os.environ.get("LOAD_CLIENTS", "1000"))
LOAD_MB = int(os.environ.get("LOAD_MB", "4" if QUICK else "100"))
LOAD_TIMEOUT = float(os.environ.get("LOAD_TIMEOUT", "60" if QUICK else "150"))
WORKLOADS = ("copy", "live", "blob", "docs", "load")

# Where the processes run. skopeo copies and the one-stream blob, one client each, are
# measured in two placements: "shared", everything free to run on every CPU (as every other
# workload runs), and "isolated", the client on its own CPUs and every server (the upstream
# too) on the others, as when the client is another machine (a CI runner pulling through
# its mirror). On 2 CPUs the shared figures depend on whether the scheduler puts the client
# on the server's CPU (sluice's one-stream blob pinned beside curl: 2.7 GB/s; curl on the
# other CPU: 5.7 GB/s) and on the client's CPU time competing with the proxy's (skopeo is
# CPU-bound: it hashes everything it pulls; a direct copy has no proxy to compete with).
CPUS = sorted(os.sched_getaffinity(0))
ISOLATE = len(CPUS) >= 2 and os.environ.get("ISOLATE", "1") != "0"
SERVER_CPUS = CPUS[: (len(CPUS) + 1) // 2]  # the servers get the larger half
CLIENT_CPUS = CPUS[(len(CPUS) + 1) // 2 :]
PLACEMENTS = ("isolated", "shared") if ISOLATE else ("shared",)
_client_cpus = None  # set while isolated: run() starts clients there
ONLY = [w for w in os.environ.get("ONLY", "").split(",") if w]
if any(w not in WORKLOADS for w in ONLY):
    raise SystemExit(f"ONLY: choose from {','.join(WORKLOADS)}")


def wanted(workload):
    return not ONLY or workload in ONLY

MANIFEST_ACCEPT = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)
# npm >= 10 asks for full packuments when installing (NOTES.md).
NPM_ACCEPT = "application/json"
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
PIP_UNSET = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX")
SMALL_PACKAGE = "is-number"
LARGE_PACKAGE = "react"
SIMPLE_PROJECT = "six"
NPM_DEPS = {"semver": "7.6.3", "is-number": "7.0.0", "yargs": "17.7.2"}
PIP_REQS = [
    "six==1.16.0",
    "idna==3.7",
    "packaging==24.1",
    "certifi==2024.8.30",
    "urllib3==2.2.3",
    "charset-normalizer==3.3.2",
    "requests==2.32.3",
]

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------------------

STARTED = []  # every Popen started here, stopped by pid in stop_all()


def descendants(pid):
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


def kib_field(path, key):
    """A "Key: N kB" field of a /proc file in KiB (0 when absent or the process is gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_status(pid, key):
    """A /proc/PID/status field in KiB (0 when the process is gone)."""
    return kib_field(f"/proc/{pid}/status", key)


def tree_rss_mb(pid):
    """VmRSS of the process and its descendants (workers), in MB (MiB)."""
    return round(sum(proc_status(p, "VmRSS") for p in [pid] + descendants(pid)) / 1024, 1)


def stop_all():
    procs = [p for p in STARTED if p.poll() is None]
    family = {p.pid: descendants(p.pid) for p in procs}
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 8
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    # Workers of a master that did not take them down (by pid, recorded before).
    kids = [k for ks in family.values() for k in ks]
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{k}") for k in kids):
        time.sleep(0.05)
    STARTED.clear()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def start(name, argv, work, env=None, cwd=None):
    logf = open(os.path.join(work, f"{name}.log"), "wb")
    e = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        e.pop(k, None)
    e.update(env or {})
    p = subprocess.Popen(
        argv,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=e,
        cwd=cwd or work,
        start_new_session=True,  # Ctrl-C reaches us; we stop them in order
    )
    STARTED.append(p)
    return p


def run(argv, timeout=600, env=None, cwd=None, check=True, unset=()):
    e = dict(os.environ)
    e.update(env or {})
    for k in unset:
        e.pop(k, None)
    cpus = _client_cpus
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    if check and r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr[-2000:]}{r.stdout[-500:]}"
        )
    return r


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(port, path, headers=None, timeout=30, method="GET"):
    """(status, body bytes) or (None, b'') when the connection fails."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except (OSError, http.client.HTTPException):
        return None, b""


def wait_http(name, proc, port, path, ok=lambda s: s is not None, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}); see its log")
        status, _ = http_get(port, path, timeout=5)
        if ok(status):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready on port {port} after {timeout}s")


# --- discovery -------------------------------------------------------------------------


def npm_registry():
    u = run(["npm", "config", "get", "registry"]).stdout.strip()
    if not u.startswith("http"):
        raise RuntimeError("npm names no registry")
    return u if u.endswith("/") else u + "/"


def pip_index():
    """The index pip uses: PIP_INDEX_URL, its configured index-url, else its built-in one."""
    u = os.environ.get("PIP_INDEX_URL", "").strip()
    if u:
        return u
    r = run([sys.executable, "-m", "pip", "config", "list"], check=False)
    for line in r.stdout.splitlines():
        k, _, v = line.partition("=")
        v = v.strip().strip("'\"")
        if k.strip().endswith(".index-url") and v.startswith("http"):
            return v
    r = run(
        [
            sys.executable,
            "-c",
            "from pip._internal.models.index import PyPI; print(PyPI.simple_url)",
        ]
    )
    return r.stdout.strip()


# --- OCI images ------------------------------------------------------------------------


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MIB)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


class RandomReader:
    """n random bytes, for tarfile.addfile."""

    def __init__(self, n):
        self.left = n

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


class Layout:
    """An OCI image layout directory with uncompressed tar layers of random content."""

    def __init__(self, path):
        self.dir = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        self.refs = []

    def blob_path(self, digest):
        return os.path.join(self.dir, "blobs", "sha256", digest.split(":", 1)[1])

    def put(self, media_type, data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(self.blob_path(d), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": d, "size": len(data)}

    def random_layer(self, name, size):
        tmp = os.path.join(self.dir, "blobs", "sha256", ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as t:
            info = tarfile.TarInfo(name)
            info.size = size
            info.mtime = 1_700_000_000
            t.addfile(info, RandomReader(size))
        d = sha256_file(tmp)
        os.rename(tmp, self.blob_path(d))
        return {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d,
            "size": os.path.getsize(self.blob_path(d)),
        }

    def image(self, tag, layers):
        config = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
        }
        cfg = self.put(
            "application/vnd.oci.image.config.v1+json", json.dumps(config).encode()
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg,
            "layers": layers,
            "annotations": {"org.opencontainers.image.title": f"sluice-bench-{tag}"},
        }
        m = self.put(
            "application/vnd.oci.image.manifest.v1+json",
            json.dumps(manifest, indent=2).encode(),
        )
        self.refs.append(
            dict(m, annotations={"org.opencontainers.image.ref.name": tag})
        )
        with open(os.path.join(self.dir, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.refs}, f)
        return m


def skopeo_copy(src, dest, push=False):
    argv = ["skopeo", "--insecure-policy", "copy", "--retry-times", "0"]
    argv += (
        ["--dest-tls-verify=false", "--preserve-digests"]
        if push
        else ["--src-tls-verify=false"]
    )
    run(argv + [src, dest], timeout=600)


def upload_blob(port, repo, path):
    """Monolithic blob upload (POST, then PUT with the digest) to a registry."""
    digest = sha256_file(path)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    r = c.getresponse()
    r.read()
    if r.status != 202:
        raise RuntimeError(f"blob upload start: {r.status}")
    loc = urllib.parse.urlsplit(r.getheader("Location"))
    target = loc.path + "?" + (loc.query + "&" if loc.query else "") + "digest=" + digest
    with open(path, "rb") as f:
        c.request(
            "PUT",
            target,
            body=f,
            headers={
                "Content-Length": str(os.path.getsize(path)),
                "Content-Type": "application/octet-stream",
            },
        )
        r = c.getresponse()
        r.read()
    c.close()
    if r.status != 201:
        raise RuntimeError(f"blob upload: {r.status}")
    return digest


# --- measurements ----------------------------------------------------------------------


def curl_blob(url):
    r = run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url],
        timeout=300,
    )
    code, size, secs = r.stdout.split()
    if code != "200":
        raise RuntimeError(f"GET {url}: {code}")
    return int(size), float(secs)


def blob_throughput(url, streams):
    """MB/s of `streams` parallel curl downloads of url: one stream by curl's own transfer
    time (a curl process takes ~6 ms to start, 10% of a 200 MB transfer at 3 GB/s, which
    would flatten the differences); several streams as total bytes over the wall time."""
    if streams == 1:
        size, secs = curl_blob(url)
        return size / 1e6 / secs
    t = time.monotonic()
    procs = [
        subprocess.Popen(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(streams)
    ]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=300)
        code, size = out.split()
        if code != "200":
            raise RuntimeError(f"GET {url}: {code}")
        total += int(size)
    wall = time.monotonic() - t
    return total / 1e6 / wall


def wrk_secs(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        return None
    x = float(m.group(1))
    return x * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def cpu_busy_fraction(interval=0.5):
    """Share of all CPUs busy (not idle/iowait) over `interval` seconds, from /proc/stat."""

    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle

    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def fill_page_cache(work):
    """Fills the machine's free memory with clean page cache, kept for the run, as on a
    server that has been up for a while; returns the GiB filled.

    A VM whose memory the host backs lazily (Firecracker with free page reporting, as the
    one the committed results come from) pays a host page fault on the first touch of
    each guest page: writing 512 MB of new files there took 0.09 s while the kernel
    recycled pages it had used, and 1.0-1.3 s once it reached pages never touched (or
    handed back to the host). A caching proxy grows the page cache by everything it
    stores, so cold fills through sluice or distribution paid that and a direct copy (its
    output deleted, its pages recycled) did not: cold copies through the caches cost twice
    the CPU late in a run. With the free memory held by zero pages of a sparse file (read,
    never written: no disk I/O), new files take pages the kernel reclaims from it, already
    touched, the steady state of a long-running machine; every server is measured in it.
    FILL_PAGE_CACHE=0 skips this."""
    if os.environ.get("FILL_PAGE_CACHE", "1") == "0":
        return 0.0
    spare = 2 << 30  # left free for the servers' and clients' own memory
    size = kib_field("/proc/meminfo", "MemFree") * 1024 - spare
    if size <= 0:
        return 0.0
    t = time.monotonic()
    cached = kib_field("/proc/meminfo", "Cached")
    path = os.path.join(work, "page-cache-filler")
    with open(path, "wb") as f:
        f.truncate(size)
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MIB):
            pass
    # What the page cache really grew by (a tmpfs work dir, say, caches no holes).
    gib = round((kib_field("/proc/meminfo", "Cached") - cached) / (1 << 20), 1)
    log(f"filled {gib} GiB of free memory with clean page cache in {time.monotonic() - t:.1f} s")
    return gib


def settle(limit=60.0, busy=0.15):
    """Waits until the machine is quiet: a peer still working off requests queued by the
    previous wrk run (Verdaccio on a multi-MB packument keeps going long after wrk stops)
    would otherwise share the cores with the next server measured."""
    start = time.monotonic()
    deadline = start + limit
    while time.monotonic() < deadline:
        if cpu_busy_fraction() < busy:
            if time.monotonic() - start > 1.5:
                log(f"waited {time.monotonic() - start:.1f} s for the machine to be quiet")
            return
    log(f"machine still busy after {limit:.0f} s; measuring anyway")


def rotated(names, i):
    """`names` starting at the i-th (round i of an interleaved measurement)."""
    k = i % len(names) if names else 0
    return names[k:] + names[:k]


def placed_key(key, placement):
    """The result key of a figure measured in `placement`: shared keeps the plain key, as
    in the runs from before placements, which measured everything shared."""
    return key if placement == "shared" else f"{key}_{placement}"


def median_run(runs):
    """One wrk result from several: the median of each figure, the runs' req/s kept."""

    def med(key):
        xs = [r[key] for r in runs if r[key] is not None]
        return statistics.median(xs) if xs else None

    rps = med("rps")
    return {
        "rps": round(rps) if rps is not None else None,
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": "; ".join(r["socket_errors"] for r in runs if r["socket_errors"]),
        "rps_runs": [r["rps"] for r in runs],
    }


def wrk(url, headers):
    settle()
    argv = ["wrk", "-t2", "-c32", f"-d{WRK_DURATION}", "--latency"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    out = run(argv + [url], timeout=120).stdout
    res = {"rps": None, "p50_ms": None, "p99_ms": None, "non_2xx": 0, "socket_errors": ""}
    for line in out.splitlines():
        s = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(s[1])
        elif len(s) == 2 and s[0] in ("50%", "99%"):
            secs = wrk_secs(s[1])
            res["p50_ms" if s[0] == "50%" else "p99_ms"] = (
                round(secs * 1e3, 3) if secs is not None else None
            )
        elif "Non-2xx" in line:
            res["non_2xx"] = int(s[-1])
        elif "Socket errors" in line:
            res["socket_errors"] = line.strip()
    if res["rps"] is not None:
        res["rps"] = round(res["rps"])
    return res


async def load_client(port, path, buf, stats):
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setblocking(False)
    try:
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(
            s, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(s, 65536)
            if not chunk:
                stats["failed"] += 1
                return
            head += chunk
        i = head.index(b"\r\n\r\n")
        lines = head[:i].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            (int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:")),
            None,
        )
        got = len(head) - i - 4
        while length is None or got < length:
            n = await loop.sock_recv_into(s, buf)
            if n == 0:
                break
            got += n
        stats["bytes"] += got
        if status == 200 and length is not None and got == length:
            stats["ok"] += 1
        else:
            stats["failed"] += 1
    except OSError:
        stats["failed"] += 1
    finally:
        s.close()


async def load_run(port, path, clients, timeout):
    buf = bytearray(MIB)  # shared: the bytes are only counted
    stats = {"ok": 0, "failed": 0, "bytes": 0}
    tasks = [asyncio.ensure_future(load_client(port, path, buf, stats)) for _ in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    stats["unfinished"] = len(pending)
    return stats


def access_count(logpath, method, needle):
    n = 0
    with open(logpath, errors="replace") as f:
        for line in f:
            if f'"{method} ' in line and needle in line:
                n += 1
    return n


# --- the run ---------------------------------------------------------------------------


def machine():
    lscpu = run(["lscpu"], check=False).stdout
    model = next(
        (l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")),
        platform.processor(),
    )
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": next(
            (
                l.split("=", 1)[1].strip().strip('"')
                for l in open("/etc/os-release")
                if l.startswith("PRETTY_NAME=")
            ),
            "",
        ),
    }


def version(argv, pattern=r"(\d+\.\d+(?:\.\d+)?)"):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Bench:
    def __init__(self, work):
        self.work = work
        self.srv = {}  # name -> (Popen, port)
        self.res = {"errors": []}

    def dir(self, *parts):
        p = os.path.join(self.work, *parts)
        os.makedirs(p, exist_ok=True)
        return p

    def port(self, name):
        return self.srv[name][1]

    def pid(self, name):
        return self.srv[name][0].pid

    def error(self, what, e):
        msg = f"{what}: {e}"
        log("ERROR " + msg)
        self.res["errors"].append(msg)

    def timed(self, what, fn):
        """Wall seconds of fn(), logged as `what`; None when it failed (recorded as an
        error: the run goes on)."""
        t = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            self.error(what, e)
            return None
        secs = round(time.monotonic() - t, 2)
        log(f"{what}: {secs:.2f}s")
        return secs

    @contextlib.contextmanager
    def placed(self, placement):
        """Runs the body with the servers and the clients run() starts in `placement` (see
        PLACEMENTS); everything runs anywhere again afterwards, also on an error."""
        global _client_cpus
        try:
            _client_cpus = CLIENT_CPUS if placement == "isolated" else None
            self.pin_servers(SERVER_CPUS if placement == "isolated" else CPUS)
            yield
        finally:
            _client_cpus = None
            self.pin_servers(CPUS)

    def pin_servers(self, cpus):
        """Every thread of every server process on `cpus`. Threads created meanwhile take
        their creator's old set, so passes repeat until one finds nothing to change."""
        for _ in range(10):
            changed = 0
            for proc, _ in self.srv.values():
                for pid in [proc.pid] + descendants(proc.pid):
                    try:
                        threads = os.listdir(f"/proc/{pid}/task")
                    except OSError:
                        continue  # exited
                    for tid in map(int, threads):
                        try:
                            if os.sched_getaffinity(tid) != set(cpus):
                                os.sched_setaffinity(tid, cpus)
                                changed += 1
                        except OSError:
                            pass  # exited meanwhile
            if not changed:
                return
        log(f"WARNING: server threads still moving after 10 passes pinning them to CPUs {cpus}")

    # -- servers --

    def start_registry(self, name, proxy_of=None, accesslog=True):
        port = free_port()
        d = self.dir(name)
        cfg = f"""version: 0.1
log:
  level: {"info" if accesslog else "error"}
  formatter: text
  accesslog:
    disabled: {"false" if accesslog else "true"}
storage:
  filesystem:
    rootdirectory: {d}/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"""
        if proxy_of:
            cfg += f"proxy:\n  remoteurl: http://127.0.0.1:{proxy_of}\n"
        with open(os.path.join(d, "config.yml"), "w") as f:
            f.write(cfg)
        p = start(name, ["docker-registry", "serve", os.path.join(d, "config.yml")], self.work)
        wait_http(name, p, port, "/v2/", ok=lambda s: s == 200)
        self.srv[name] = (p, port)

    def start_nginx(self):
        port = free_port()
        d = self.dir("nginx")
        www = self.dir("nginx", "www")
        for t in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            self.dir("nginx", "tmp", t)
        user = "user root;\n" if os.geteuid() == 0 else ""
        tmp = os.path.join(d, "tmp")
        cfg = f"""{user}worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  access_log off;
  keepalive_requests 1000000;
  types {{ application/json json; text/html html; }}
  default_type application/octet-stream;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {www};
  }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(cfg)
        p = start(
            "nginx",
            ["nginx", "-e", os.path.join(d, "error.log"), "-p", d, "-c", os.path.join(d, "nginx.conf")],
            self.work,
        )
        wait_http("nginx", p, port, "/")
        self.srv["nginx"] = (p, port)
        self.www = www

    def start_sluice(self, npm_url, pypi_url):
        port = free_port()
        d = self.dir("sluice")
        cfg = f"""[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "1s"
[storage]
data_dir = "{d}/data"
[[upstream]]
name = "local"
format = "oci"
url = "http://127.0.0.1:{self.port('upstream')}"
default = true
[[upstream]]
name = "npmjs"
format = "npm"
url = "{npm_url}"
[[upstream]]
name = "pypi"
format = "pypi"
url = "{pypi_url}"
"""
        with open(os.path.join(d, "sluice.toml"), "w") as f:
            f.write(cfg)
        p = start(
            "sluice",
            [SLUICE, "serve", "--config", os.path.join(d, "sluice.toml")],
            self.work,
            env={"RUST_LOG": "warn"},
        )
        wait_http("sluice", p, port, "/-/healthz", ok=lambda s: s == 200)
        self.srv["sluice"] = (p, port)

    def start_verdaccio(self, npm_url):
        port = free_port()
        d = self.dir("verdaccio")
        cfg = f"""storage: {d}/storage
uplinks:
  up:
    url: {npm_url}
    timeout: 60s
    maxage: 1h
packages:
  '@*/*':
    access: $all
    proxy: up
  '**':
    access: $all
    proxy: up
listen: 127.0.0.1:{port}
max_body_size: 100mb
log: {{ type: stdout, format: pretty, level: warn }}
"""
        with open(os.path.join(d, "config.yaml"), "w") as f:
            f.write(cfg)
        p = start("verdaccio", [VERDACCIO, "--config", os.path.join(d, "config.yaml")], self.work)
        wait_http("verdaccio", p, port, "/-/ping", ok=lambda s: s == 200)
        self.srv["verdaccio"] = (p, port)

    def start_devpi(self, pypi_url):
        port = free_port()
        d = self.dir("devpi")
        venv = os.path.join(PEERS_VENV, "bin")
        run([f"{venv}/devpi-init", "--serverdir", f"{d}/server", "--root-passwd", "bench"], timeout=120)
        p = start(
            "devpi",
            [f"{venv}/devpi-server", "--serverdir", f"{d}/server", "--host", "127.0.0.1", "--port", str(port)],
            self.work,
        )
        wait_http("devpi", p, port, "/", ok=lambda s: s == 200, timeout=90)
        # Point root/pypi at the index pip uses (devpi's own default may differ).
        cli = [f"{venv}/devpi", "--clientdir", f"{d}/client"]
        run(cli + ["use", f"http://127.0.0.1:{port}/"], timeout=60)
        run(cli + ["login", "root", "--password", "bench"], timeout=60)
        run(cli + ["index", "root/pypi", f"mirror_url={pypi_url}"], timeout=60)
        self.srv["devpi"] = (p, port)

    def start_proxpi(self, pypi_url):
        """proxpi as its Docker image runs it: gunicorn's default single sync worker,
        --preload, access log on stdout (here: its log file)."""
        port = free_port()
        d = self.dir("proxpi")
        p = start(
            "proxpi",
            [
                os.path.join(PEERS_VENV, "bin", "gunicorn"),
                "--bind",
                f"127.0.0.1:{port}",
                "--preload",
                "--access-logfile",
                "-",
                "--access-logformat",
                '%(h)s "%(r)s" %(s)s %(b)s %(M)dms',
                "--logger-class",
                "proxpi.server._GunicornLogger",
                # proxpi lists the whole upstream index on its first request: that takes
                # longer than gunicorn's default 30 s worker timeout on a busy machine.
                "--timeout",
                "600",
                "--no-control-socket",  # it would go to ~/.gunicorn
                "proxpi.server:app",
            ],
            self.work,
            env={"PROXPI_INDEX_URL": pypi_url, "PROXPI_CACHE_DIR": f"{d}/cache"},
            cwd=d,
        )
        wait_http("proxpi", p, port, "/health")
        self.srv["proxpi"] = (p, port)

    # -- workloads --

    def build_images(self):
        """COPY_RUNS distinct ~250 MB images per placement (bench/big:v0, v1, ...: a cold
        pull each) and a small one; image v0's 200 MB layer is the blob of the throughput
        runs."""
        lay = Layout(self.dir("layout"))
        host = f"127.0.0.1:{self.port('upstream')}"
        for n in range(COPY_RUNS * len(PLACEMENTS)):
            big = [lay.random_layer("opt/bench/big.bin", BIG_LAYER)]
            for i, size in enumerate(OTHER_LAYERS):
                big.append(lay.random_layer(f"opt/bench/layer{i}.bin", size))
            big.append(lay.random_layer("etc/bench-release", 4096))
            lay.image(f"big{n}", big)
            if n == 0:
                self.big_blob = big[0]
                self.big_blob_path = lay.blob_path(big[0]["digest"])
                self.image_bytes = sum(l["size"] for l in big)
            skopeo_copy(f"oci:{lay.dir}:big{n}", f"docker://{host}/bench/big:v{n}", push=True)
        lay.image("small", [lay.random_layer("etc/small.bin", 64 * 1024)])
        skopeo_copy(f"oci:{lay.dir}:small", f"docker://{host}/bench/small:v1", push=True)
        # Fresh blobs for the many-clients run, one per proxy so each is cold.
        self.load_blobs = {}
        for name in ("sluice", "distribution"):
            path = os.path.join(self.work, f"load-{name}.bin")
            with open(path, "wb") as f:
                for _ in range(LOAD_MB):
                    f.write(os.urandom(MIB))
            self.load_blobs[name] = upload_blob(self.port("upstream"), f"bench/load-{name}", path)
            os.unlink(path)

    def oci_hosts(self):
        return {
            "direct": f"127.0.0.1:{self.port('upstream')}",
            "sluice": f"127.0.0.1:{self.port('sluice')}",
            "distribution": f"127.0.0.1:{self.port('distribution')}",
        }

    def skopeo_runs(self):
        hosts = self.oci_hosts()
        names = list(hosts)
        samples = {pl: {} for pl in PLACEMENTS}
        # The first timed copy of a run (direct, image v0, the first placement) has taken
        # 1.1-1.3 s where the others took 0.8 s. Not the upstream's disk (its files were all
        # cached: 3.8 GB read in 0.6 s) nor a cold skopeo (an untimed copy of another image
        # just before took 0.8 s, and v0 stayed slow); once, with an untimed copy of v0
        # itself first, neither was slow (0.84 s, 0.81 s). Cause not found; a median of 7
        # keeps it to one rank of the direct figures.
        # Cold: each image once through each server, each placement its own images; warm:
        # v0 again. The server and the placement that go first rotate, and dirty pages are
        # written out before each copy (the pushed images and the previous copy would
        # otherwise be flushed during the next one).
        for phase in ("cold", "warm"):
            for n in range(COPY_RUNS):
                for placement in rotated(list(PLACEMENTS), n):
                    tag = f"v{PLACEMENTS.index(placement) * COPY_RUNS + n}" if phase == "cold" else "v0"
                    for name in rotated(names, n):
                        host = hosts[name]
                        dest = os.path.join(self.work, f"pull-{name}-{phase}")
                        os.sync()
                        settle()  # distribution keeps storing a pulled image after the client is done
                        with self.placed(placement):
                            secs = self.timed(
                                f"skopeo copy {phase} bench/big:{tag} via {name} ({placement})",
                                lambda: skopeo_copy(f"docker://{host}/bench/big:{tag}", f"dir:{dest}"),
                            )
                        if secs is not None:
                            samples[placement].setdefault(name, {}).setdefault(phase, []).append(secs)
                        shutil.rmtree(dest, ignore_errors=True)
        for placement, by_name in samples.items():
            self.res[placed_key("skopeo_copy_s", placement)] = {
                name: {ph: round(statistics.median(v), 2) for ph, v in phases.items()}
                for name, phases in by_name.items()
            }
            self.res[placed_key("skopeo_copy_samples_s", placement)] = by_name
        self.res["image_mb"] = round(self.image_bytes / 1e6, 1)

    def blob_runs(self):
        d = self.big_blob["digest"]
        shutil.copyfile(self.big_blob_path, os.path.join(self.www, "blob"))
        urls = {
            "sluice": f"http://127.0.0.1:{self.port('sluice')}/v2/bench/big/blobs/{d}",
            "distribution": f"http://127.0.0.1:{self.port('distribution')}/v2/bench/big/blobs/{d}",
            "nginx": f"http://127.0.0.1:{self.port('nginx')}/blob",
        }
        for name, url in list(urls.items()):
            try:
                size, _ = curl_blob(url)  # warm
                if size != self.big_blob["size"]:
                    raise RuntimeError(f"{size} bytes, expected {self.big_blob['size']}")
            except Exception as e:  # noqa: BLE001
                self.error(f"blob {name}", e)
                del urls[name]
        # A proxy may still be storing what it just fetched (distribution does so after its
        # response; until then it fetches from the upstream again).
        settle()
        # Rounds interleave the servers (who goes first rotates), so that a noisy moment
        # on a shared machine lands on one sample of each rather than on all of one. One
        # stream is measured in each placement, 8 streams (which need every core) shared.
        # Each kind: (streams, placement, key of its samples, key of its medians).
        kinds = [(1, pl, placed_key("1", pl), placed_key("blob_1_stream_MBps", pl)) for pl in PLACEMENTS]
        kinds.append((8, "shared", "8", "blob_8_streams_MBps"))
        samples = {}
        for i in range(BLOB_RUNS):
            for name in rotated(list(urls), i):
                for streams, placement, skey, _ in kinds:
                    try:
                        with self.placed(placement):
                            mbps = blob_throughput(urls[name], streams)
                        samples.setdefault(skey, {}).setdefault(name, []).append(round(mbps))
                    except Exception as e:  # noqa: BLE001
                        self.error(f"blob {name} {streams} streams ({placement})", e)
        for streams, placement, skey, key in kinds:
            self.res[key] = {n: round(statistics.median(v)) for n, v in samples.get(skey, {}).items()}
            log(f"blob, {streams} stream(s), {placement}: {self.res[key]} MB/s")
        self.res["blob_mb"] = round(self.big_blob["size"] / 1e6, 1)
        self.res["blob_samples_MBps"] = samples

    def doc_runs(self):
        """wrk on cached documents; nginx serves a file of the same bytes as sluice's."""
        s, v, dv, px = (self.port(n) for n in ("sluice", "verdaccio", "devpi", "proxpi"))
        docs = {
            "manifest": (
                {"Accept": MANIFEST_ACCEPT},
                {
                    "sluice": f"http://127.0.0.1:{s}/v2/bench/big/manifests/v0",
                    "distribution": f"http://127.0.0.1:{self.port('distribution')}/v2/bench/big/manifests/v0",
                },
                "manifest.json",
            ),
            "packument_small": (
                {"Accept": NPM_ACCEPT},
                {
                    "sluice": f"http://127.0.0.1:{s}/npmjs/{SMALL_PACKAGE}",
                    "verdaccio": f"http://127.0.0.1:{v}/{SMALL_PACKAGE}",
                },
                "packument-small.json",
            ),
            "packument_large": (
                {"Accept": NPM_ACCEPT},
                {
                    "sluice": f"http://127.0.0.1:{s}/npmjs/{LARGE_PACKAGE}",
                    "verdaccio": f"http://127.0.0.1:{v}/{LARGE_PACKAGE}",
                },
                "packument-large.json",
            ),
            "simple_page": (
                {"Accept": PIP_ACCEPT},
                {
                    "sluice": f"http://127.0.0.1:{s}/pypi/simple/{SIMPLE_PROJECT}/",
                    "devpi": f"http://127.0.0.1:{dv}/root/pypi/+simple/{SIMPLE_PROJECT}/",
                    "proxpi": f"http://127.0.0.1:{px}/index/{SIMPLE_PROJECT}/",
                },
                "simple.json",
            ),
        }
        out, out_placed = {}, {}
        for doc, (headers, urls, fname) in docs.items():
            row = out.setdefault(doc, {})
            for name, url in list(urls.items()):
                try:
                    u = urllib.parse.urlsplit(url)
                    status, body = None, b""
                    deadline = time.monotonic() + 240
                    while time.monotonic() < deadline:  # devpi may 404 while it warms
                        status, body = http_get(u.port, u.path, headers, timeout=200)
                        if status == 200:
                            break
                        time.sleep(1)
                    if status != 200:
                        raise RuntimeError(f"GET {url}: {status}")
                    for _ in range(3):
                        http_get(u.port, u.path, headers)
                    if name == "sluice":
                        with open(os.path.join(self.www, fname), "wb") as f:
                            f.write(body)
                        urls["nginx"] = f"http://127.0.0.1:{self.port('nginx')}/{fname}"
                        sluice_len = len(body)
                        continue  # measured in rounds with nginx, below
                    r = wrk(url, headers)
                    r["bytes"] = len(body)
                    row[name] = r
                    log(f"{doc} via {name}: {r['rps']} req/s ({len(body)} bytes)")
                except Exception as e:  # noqa: BLE001
                    self.error(f"{doc} {name}", e)
                    urls.pop(name, None)
            # sluice and nginx are within a few per cent of each other: rounds alternate
            # them (who goes first rotates), each keeping the median of its runs. The small
            # documents are measured in each placement (see PLACEMENTS): with the client on
            # its own CPU the figure is the server's own cost per request; shared, it also
            # depends on how the scheduler interleaves wrk's threads with the server's.
            pair = [n for n in ("sluice", "nginx") if n in urls]
            large = doc == "packument_large"
            for placement in ("shared",) if large else PLACEMENTS:
                runs = {}
                for i in range(LARGE_DOC_ROUNDS if large else DOC_ROUNDS):
                    for name in rotated(pair, i):
                        try:
                            with self.placed(placement):
                                runs.setdefault(name, []).append(wrk(urls[name], headers))
                        except Exception as e:  # noqa: BLE001
                            self.error(f"{doc} {name} ({placement})", e)
                placed_row = row if placement == "shared" else out_placed.setdefault(placement, {}).setdefault(doc, {})
                for name, rs in runs.items():
                    r = median_run(rs)
                    r["bytes"] = sluice_len  # nginx serves a file of sluice's bytes
                    placed_row[name] = r
                    log(f"{doc} via {name} ({placement}): {r['rps']} req/s (runs {r['rps_runs']})")
        self.res["docs"] = out
        for placement, docs_there in out_placed.items():
            self.res[placed_key("docs", placement)] = docs_there

    def npm_runs(self, direct):
        proj = self.dir("npm", "template")
        with open(os.path.join(proj, "package.json"), "w") as f:
            json.dump({"name": "bench", "version": "1.0.0", "private": True, "dependencies": NPM_DEPS}, f)
        common = ["--no-audit", "--no-fund", "--no-update-notifier", "--ignore-scripts", "--loglevel=error"]

        def npm(registry, cwd, cache, *args):
            rc = os.path.join(cwd, ".npmrc-bench")
            with open(rc, "w") as f:
                f.write(f"registry={registry}\n")
            run(["npm", *args, "--userconfig", rc, "--cache", cache, *common], cwd=cwd, timeout=300)

        npm(direct, proj, self.dir("npm", "cache-lock"), "install", "--package-lock-only",
            "--omit-lockfile-registry-resolved=true")
        with open(os.path.join(proj, "package-lock.json")) as f:
            self.res["npm_lock_packages"] = len(json.load(f)["packages"]) - 1
        regs = {
            "direct": direct,
            "sluice": f"http://127.0.0.1:{self.port('sluice')}/npmjs/",
            "verdaccio": f"http://127.0.0.1:{self.port('verdaccio')}/",
        }
        out = {}
        for phase in ("cold", "warm"):
            for name, reg in regs.items():
                d = os.path.join(self.work, "npm", f"{name}-{phase}")
                shutil.copytree(proj, d)
                shutil.rmtree(os.path.join(d, "node_modules"), ignore_errors=True)
                secs = self.timed(f"npm ci {phase} via {name}",
                                  lambda: npm(reg, d, os.path.join(d, ".cache"), "ci"))
                if secs is not None:
                    out.setdefault(name, {})[phase] = secs
                shutil.rmtree(d, ignore_errors=True)
        self.res["npm_ci_s"] = out

    def pip_runs(self, direct):
        idx = {
            "direct": direct,
            "sluice": f"http://127.0.0.1:{self.port('sluice')}/pypi/simple/",
            "devpi": f"http://127.0.0.1:{self.port('devpi')}/root/pypi/+simple/",
            "proxpi": f"http://127.0.0.1:{self.port('proxpi')}/index/",
        }
        out = {}
        env = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"}
        # Only the index under test: no local wheel directories, no other index.
        for phase in ("cold", "warm"):
            for name, url in idx.items():
                d = os.path.join(self.work, "pip", f"{name}-{phase}")
                argv = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--no-cache-dir", "--only-binary", ":all:", "--target", d, "--index-url", url]
                secs = self.timed(f"pip install {phase} via {name}",
                                  lambda: run(argv + PIP_REQS, env=env, timeout=300, unset=PIP_UNSET))
                if secs is not None:
                    out.setdefault(name, {})[phase] = secs
                shutil.rmtree(d, ignore_errors=True)
        self.res["pip_install_s"] = out

    def load_runs(self):
        up_log = os.path.join(self.work, "upstream.log")
        out = {}
        for name in ("sluice", "distribution"):
            digest = self.load_blobs[name]
            repo = f"bench/load-{name}"
            pid = self.pid(name)
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM: the peak of this run only
                hwm_reset = True
            except OSError:
                hwm_reset = False
            before = access_count(up_log, "GET", f"/v2/{repo}/blobs/{digest}")
            t = time.monotonic()
            stats = asyncio.run(
                load_run(self.port(name), f"/v2/{repo}/blobs/{digest}", LOAD_CLIENTS, LOAD_TIMEOUT)
            )
            wall = time.monotonic() - t
            time.sleep(0.5)
            gets = access_count(up_log, "GET", f"/v2/{repo}/blobs/{digest}") - before
            heads = access_count(up_log, "HEAD", f"/v2/{repo}/blobs/{digest}")
            out[name] = {
                "upstream_blob_gets": gets,
                "upstream_blob_heads": heads,
                "peak_rss_mb": round(proc_status(pid, "VmHWM") / 1024, 1),
                "peak_is_of_this_run": hwm_reset,
                "rss_anon_mb_after": round(proc_status(pid, "RssAnon") / 1024, 1),
                "rss_file_mb_after": round(proc_status(pid, "RssFile") / 1024, 1),
                "clients_ok": stats["ok"],
                "clients_failed": stats["failed"],
                "clients_unfinished": stats["unfinished"],
                "wall_s": round(wall, 1),
                "delivered_MBps": round(stats["bytes"] / 1e6 / wall),
            }
            log(f"load via {name}: {out[name]}")
        self.res["load"] = out
        self.res["load_blob_mb"] = round(LOAD_MB * MIB / 1e6, 1)
        self.res["load_clients"] = LOAD_CLIENTS


# --- report ----------------------------------------------------------------------------


def ratio(a, b):
    # Unrounded enough that a target is judged on the measured ratio, not a rounded one
    # (0.998 x nginx is not 1.0 x).
    return round(a / b, 4) if a and b else None


def placements_of(res):
    """The placements a run measured skopeo copies and the one-stream blob in (see
    PLACEMENTS) and the label of each in the report; runs from before placements, or with
    ISOLATE=0, measured everything shared and label nothing."""
    if res.get("placement", {}).get("isolate"):
        return ("isolated", "shared"), {"isolated": ", client on its own CPU", "shared": ", client sharing the CPUs"}
    return ("shared",), {"shared": ""}


def report(res):
    """Rows of the table, and the SPEC section 7 targets with their status."""
    rows, targets = [], []

    def target(what, r, cmp, goal, note=""):
        met = None if r is None else (r >= goal if cmp == ">=" else r <= goal)
        targets.append({"target": what, "ratio": r, "goal": f"{cmp} {goal}", "met": met, "note": note})

    def best(values, higher):
        peers = {k: v for k, v in values.items() if k not in ("sluice", "direct") and v}
        if not peers:
            return None, None
        k = (max if higher else min)(peers, key=peers.get)
        return k, peers[k]

    def add(workload, metric, values, higher, vs_direct=False):
        values = {k: v for k, v in values.items() if v is not None}
        bp, bv = best(values, higher)
        r_peer = None
        if bv and values.get("sluice"):
            r_peer = ratio(values["sluice"], bv) if higher else ratio(values["sluice"], bv)
        rows.append({
            "workload": workload, "metric": metric, "values": values,
            "best_peer": bp, "sluice_vs_best_peer": r_peer,
            "sluice_vs_direct": ratio(values.get("sluice"), values.get("direct")) if vs_direct else None,
        })

    places, where = placements_of(res)
    reference = "(reference)" if len(places) > 1 else ""  # see markdown(): judged isolated
    for pl in places:
        one = res.get(placed_key("blob_1_stream_MBps", pl), {})
        add(f"warm {res.get('blob_mb')} MB blob, 1 stream{where[pl]}", "MB/s", one, True)
        ref = reference if pl == "shared" else ""
        target(f"warm blob 1 stream ≥ 1.0 × nginx{where[pl]}", ratio(one.get("sluice"), one.get("nginx")), ">=", 1.0, ref)
        target(f"warm blob 1 stream ≥ 1.5 × distribution proxy{where[pl]}",
               ratio(one.get("sluice"), one.get("distribution")), ">=", 1.5, ref)
    add(f"warm {res.get('blob_mb')} MB blob, 8 streams", "MB/s (aggregate)", res.get("blob_8_streams_MBps", {}), True)

    peers_25 = {"packument_small": ["verdaccio"], "simple_page": ["devpi", "proxpi"]}
    # Runs from before the documents were measured in both placements have only "docs"
    # (shared): those are judged as measured.
    doc_places = [pl for pl in places if res.get(placed_key("docs", pl))]
    for pl in doc_places:
        ref = "(reference)" if pl == "shared" and len(doc_places) > 1 else ""
        for doc, runs in res[placed_key("docs", pl)].items():
            size = runs.get("sluice", {}).get("bytes")
            label = f"cached {doc.replace('_', ' ')} ({size} B), wrk -c32{where[pl] if len(doc_places) > 1 else ''}"
            add(label, "req/s", {k: v["rps"] for k, v in runs.items()}, True)
            add(label, "p50 ms", {k: v["p50_ms"] for k, v in runs.items()}, False)
            add(label, "p99 ms", {k: v["p99_ms"] for k, v in runs.items()}, False)
            rps = {k: v["rps"] for k, v in runs.items()}
            if doc == "packument_large":
                continue  # several MB: not "small metadata"; reported, no target
            where_doc = where[pl] if len(doc_places) > 1 else ""
            target(f"{doc} req/s ≥ 1.0 × nginx same-size file{where_doc}", ratio(rps.get("sluice"), rps.get("nginx")),
                   ">=", 1.0, ref)
            for p in peers_25.get(doc, []) if pl == "shared" else []:  # the peers run shared only
                target(f"{doc} req/s ≥ 25 × {p}", ratio(rps.get("sluice"), rps.get(p)), ">=", 25)

    copy = f"skopeo copy {res.get('image_mb')} MB image (median of {COPY_RUNS})"
    for rkey, label, note in [
        (placed_key("skopeo_copy_s", pl), copy + where[pl], reference if pl == "shared" else "") for pl in places
    ] + [
        ("npm_ci_s", f"npm ci ({res.get('npm_lock_packages')} packages)", "live network: noisy"),
        ("pip_install_s", f"pip install ({len(PIP_REQS)} wheels)", "live network: noisy"),
    ]:
        runs = res.get(rkey)
        if not runs:
            continue
        for phase in ("cold", "warm"):
            vals = {k: v.get(phase) for k, v in runs.items()}
            add(f"{label}, {phase}", "s (wall)", vals, False, vs_direct=True)
        cold = {k: v.get("cold") for k, v in runs.items()}
        target(f"cold {label} through sluice ≤ 1.05 × direct", ratio(cold.get("sluice"), cold.get("direct")), "<=", 1.05,
               note)

    load = res.get("load", {})
    if load:
        lbl = f"{res.get('load_clients')} clients, one cold {res.get('load_blob_mb')} MB blob"
        add(lbl, "upstream blob GETs", {k: v["upstream_blob_gets"] for k, v in load.items()}, False)
        add(lbl, "peak RSS MB", {k: v["peak_rss_mb"] for k, v in load.items()}, False)
        add(lbl, "clients complete", {k: v["clients_ok"] for k, v in load.items()}, True)
        add(lbl, "wall s", {k: v["wall_s"] for k, v in load.items()}, False)
        s = load.get("sluice", {})
        if s:
            targets.append({"target": "1000 clients: exactly 1 upstream fetch", "ratio": s["upstream_blob_gets"],
                            "goal": "== 1", "met": s["upstream_blob_gets"] == 1, "note": "upstream GETs"})
            targets.append({"target": "1000 clients: RSS < 200 MB", "ratio": s["peak_rss_mb"], "goal": "< 200",
                            "met": s["peak_rss_mb"] < 200, "note": "VmHWM MB"})
    idle = res.get("idle_rss_mb", {})
    add("idle RSS after start", "MB", idle, False)
    add("RSS after the load", "MB", res.get("rss_after_mb", {}), False)
    if idle.get("sluice"):
        targets.append({"target": "idle RSS < 30 MB", "ratio": idle["sluice"], "goal": "< 30",
                        "met": idle["sluice"] < 30, "note": "MB"})
    return rows, targets


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(doc, rows, targets):
    names = ["direct", "sluice", "nginx", "distribution", "verdaccio", "devpi", "proxpi"]
    m = doc["machine"]
    out = [
        f"# sluice side-by-side benchmark, {doc['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, kernel {m['kernel']} ({m['os']}). "
        f"Load average at start / end: {doc['load_average']['start']} / {doc['load_average']['end']}"
        + (" — shared machine, figures are noisy." if doc["noisy"] else "."),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v),
        "",
    ]
    if doc["results"].get("page_cache_filled_gib"):
        out += [
            f"Before the servers started, {doc['results']['page_cache_filled_gib']} GiB of free memory were "
            "filled with clean page cache, kept during the run (the state of a machine that has been up; "
            "see fill_page_cache in compare.py).",
            "",
        ]
    places, where = placements_of(doc["results"])
    if len(places) > 1:
        pl = doc["results"]["placement"]
        cpus = lambda xs: ", ".join(map(str, xs))  # noqa: E731
        out += [
            "Placement: skopeo copies, the one-stream blob"
            + (" and the small cached documents (sluice and nginx)" if doc["results"].get(placed_key("docs", "isolated")) else "")
            + " are measured twice, with the client on "
            f"CPU {cpus(pl['client_cpus'])} and every server (the upstream too) on CPU {cpus(pl['server_cpus'])} "
            "(\"client on its own CPU\", as when the client is another machine), and with everything free "
            "to run on every CPU (\"client sharing the CPUs\"), as every other workload runs.",
            "",
        ]
    out += [
        f"Command: `{doc['command']}`; options: {json.dumps(doc['options'])}; run took {doc['duration_s']} s.",
        "All traffic on loopback; npm/PyPI peers proxy the registries npm and pip use (asked at run time).",
        "",
        "| workload | metric | " + " | ".join(names) + " | sluice ÷ best peer | sluice ÷ direct |",
        "|---|---|" + "---:|" * (len(names) + 2),
    ]
    for r in rows:
        v = r["values"]
        bp = f"{fmt(r['sluice_vs_best_peer'])} ({r['best_peer']})" if r["sluice_vs_best_peer"] else "–"
        out.append(
            f"| {r['workload']} | {r['metric']} | " + " | ".join(fmt(v.get(n)) for n in names)
            + f" | {bp} | {fmt(r['sluice_vs_direct'])} |"
        )
    out += ["", "Ratios are sluice's figure divided by the other's: above 1 is better for MB/s, req/s "
            "and clients; below 1 is better for times, latencies, upstream GETs and RSS."]
    out += ["", "## SPEC §7 targets", ""]
    if len(places) > 1:
        out += ["A target measured in both placements is judged with the client on its own CPU, as sluice is "
                "deployed: a mirror that CI runners pull through over the network. The same check with the client "
                "sharing the CPUs is shown as measured, marked (reference).", ""]
    out += ["| target | measured | goal | met |", "|---|---:|---|---|"]
    for t in targets:
        met = "n/a" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        note = f" {t['note']}" if t.get("note") else ""
        measured = f"{t['ratio']:.3f}" if isinstance(t["ratio"], float) and t["ratio"] < 10 else fmt(t["ratio"])
        out.append(f"| {t['target']} | {measured}{note} | {t['goal']} | {met} |")
    if doc["results"].get("errors"):
        out += ["", "## Errors", ""] + [f"- {e}" for e in doc["results"]["errors"]]
    load = doc["results"].get("load", {})
    if load:
        out += ["", "Many-clients detail: " + "; ".join(
            f"{k}: {v['clients_ok']} ok / {v['clients_failed']} failed / {v['clients_unfinished']} unfinished "
            f"in {v['wall_s']} s, {v['delivered_MBps']} MB/s delivered, RSS anon {v['rss_anon_mb_after']} MB + "
            f"file {v['rss_file_mb_after']} MB after"
            for k, v in load.items())]
    for pl in places:
        samples = doc["results"].get(placed_key("skopeo_copy_samples_s", pl), {})
        if samples:
            out += ["", f"skopeo copy samples{where[pl]} (s, in image order): " + "; ".join(
                f"{name} {phase} {', '.join(fmt(x) for x in xs)}"
                for name, phases in samples.items() for phase, xs in phases.items())]
    blobs = doc["results"].get("blob_samples_MBps", {})
    kinds = {placed_key("1", pl): f"1 stream{where[pl]}" for pl in places}
    kinds["8"] = "8 streams"
    if blobs:
        out += ["", "Warm blob samples (MB/s, in round order): " + "; ".join(
            f"{name} {kinds.get(k, k)} {', '.join(fmt(x) for x in xs)}"
            for k, by in blobs.items() for name, xs in by.items())]
    for pl in places:
        docs = doc["results"].get(placed_key("docs", pl), {})
        runs = [f"{d} {name} {', '.join(fmt(x) for x in r['rps_runs'])}"
                for d, row in docs.items() for name, r in row.items() if r.get("rps_runs")]
        if runs:
            label = where[pl] if doc["results"].get(placed_key("docs", "isolated")) else ""
            out += ["", f"wrk req/s of each run{label} (sluice and nginx alternate): " + "; ".join(runs)]
    out += ["", "RSS figures sum the process and its workers (nginx, gunicorn)."]
    return "\n".join(out) + "\n"


def listening_ports():
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[3] == "0A":
                        ports.add(int(p[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < LOAD_CLIENTS * 2 + 200:
        raise SystemExit(f"open-files limit {hard} too low for {LOAD_CLIENTS} clients")
    work = tempfile.mkdtemp(prefix="sluice-compare-")
    b = Bench(work)
    load_start = loadavg()
    started_utc = datetime.datetime.now(datetime.timezone.utc)
    ports = []
    try:
        b.res["page_cache_filled_gib"] = fill_page_cache(work)
        b.res["placement"] = {"isolate": ISOLATE, "server_cpus": SERVER_CPUS, "client_cpus": CLIENT_CPUS}
        npm_url = npm_registry()
        pypi_url = pip_index()
        if not pypi_url.endswith("/"):
            pypi_url += "/"  # proxpi joins project names onto it
        log(f"work dir {work}; starting servers")
        b.start_registry("upstream")
        b.start_registry("distribution", proxy_of=b.port("upstream"), accesslog=False)
        b.start_nginx()
        b.start_sluice(npm_url, pypi_url)
        b.start_verdaccio(npm_url)
        b.start_devpi(pypi_url)
        b.start_proxpi(pypi_url)
        ports = [port for _, port in b.srv.values()]
        time.sleep(2)
        b.res["idle_rss_mb"] = {n: tree_rss_mb(p.pid) for n, (p, _) in b.srv.items() if n != "upstream"}
        log(f"idle RSS MB: {b.res['idle_rss_mb']}")
        log("building and pushing images")
        b.build_images()
        if wanted("copy"):
            log("skopeo copy")
            b.skopeo_runs()
        if not SKIP_LIVE and wanted("live"):
            log("npm ci")
            try:
                b.npm_runs(npm_url)
            except Exception as e:  # noqa: BLE001
                b.error("npm", e)
            log("pip install")
            b.pip_runs(pypi_url)
        if wanted("blob"):
            log("warm blob throughput")
            b.blob_runs()
        if wanted("docs"):
            log("cached documents (wrk)")
            b.doc_runs()
        if wanted("load"):
            log(f"{LOAD_CLIENTS} clients on one cold blob")
            b.load_runs()
        b.res["rss_after_mb"] = {n: tree_rss_mb(p.pid) for n, (p, _) in b.srv.items() if n != "upstream"}
    finally:
        stop_all()
        left = listening_ports() & set(ports)
        for _ in range(30):
            if not left:
                break
            time.sleep(0.1)
            left = listening_ports() & set(ports)
        if left:
            log(f"WARNING: still listening on {sorted(left)}")
        if os.environ.get("KEEP_WORK") != "1":
            shutil.rmtree(work, ignore_errors=True)

    venv = os.path.join(PEERS_VENV, "bin")
    git = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "proxy", "config", "policy",
                 "Cargo.toml", "Cargo.lock"], check=False).stdout.strip()
    if dirty:
        git += " + uncommitted changes"  # the binary measured is the working tree's
    versions = {
        "sluice": f"{version([SLUICE, '--version'])} ({git})",
        "nginx": version(["nginx", "-v"]),
        "docker-registry": version(["docker-registry", "--version"], r"v?(\d+\.\d+\.\d+\S*)"),
        "verdaccio": version([VERDACCIO, "--version"]),
        "devpi-server": version([f"{venv}/devpi-server", "--version"]),
        "proxpi": version([f"{venv}/python", "-c", "import importlib.metadata as m; print(m.version('proxpi'))"]),
        "gunicorn": version([f"{venv}/gunicorn", "--version"]),
        "node": version(["node", "--version"]),
        "npm": version(["npm", "--version"]),
        "pip": version([sys.executable, "-m", "pip", "--version"]),
        "skopeo": version(["skopeo", "--version"]),
        "wrk": version(["wrk", "-v"]),
        "curl": version(["curl", "--version"]),
    }
    load_end = loadavg()
    doc = {
        "date": started_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "machine": machine(),
        "load_average": {"start": load_start, "end": load_end},
        "noisy": float(load_start.split()[0]) > 0.5 or float(load_end.split()[0]) > 0.5,
        "versions": versions,
        "command": ("QUICK=1 " if QUICK else "SKIP_LIVE=1 " if SKIP_LIVE else "")
        + (f"ONLY={','.join(ONLY)} " if ONLY else "") + "benches/compare",
        "options": {"quick": QUICK, "skip_live": SKIP_LIVE, "isolate": ISOLATE, "wrk": f"-t2 -c32 -d{WRK_DURATION} --latency",
                    "blob_runs": BLOB_RUNS, "doc_rounds": DOC_ROUNDS, "large_doc_rounds": LARGE_DOC_ROUNDS, "copy_runs": COPY_RUNS, "load_clients": LOAD_CLIENTS, "load_mb": LOAD_MB,
                    "npm_deps": NPM_DEPS, "pip_requirements": PIP_REQS,
                    "packuments": [SMALL_PACKAGE, LARGE_PACKAGE], "simple_project": SIMPLE_PROJECT},
        "duration_s": round(time.monotonic() - T0),
        "results": b.res,
    }
    rows, targets = report(b.res)
    doc["rows"], doc["targets"] = rows, targets
    md = markdown(doc, rows, targets)
    print(md)
    default_dir = tempfile.mkdtemp(prefix="sluice-compare-only-") if ONLY else os.path.join(ROOT, "benches", "results")
    outdir = os.environ.get("RESULTS_DIR", default_dir)
    os.makedirs(outdir, exist_ok=True)
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower().split(".")[0])[:24].strip("-") or "host"
    base = os.path.join(outdir, f"{started_utc.strftime('%Y-%m-%d')}-{host}" + ("-quick" if QUICK else ""))
    # A second run on the same day gets -2, -3, ...: never overwrite a saved run.
    first, n = base, 1
    while os.path.exists(base + ".json") or os.path.exists(base + ".md"):
        n += 1
        base = f"{first}-{n}"
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(md)
    log(f"wrote {base}.json and {base}.md")
    return 0 if not b.res["errors"] else 1


def rerender(path):
    """`compare.py --report FILE.json`: the markdown of a saved run, targets judged again."""
    with open(path) as f:
        doc = json.load(f)
    doc["rows"], doc["targets"] = report(doc["results"])
    md = markdown(doc, doc["rows"], doc["targets"])
    base = path[: -len(".json")] if path.endswith(".json") else path
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        rerender(sys.argv[2])
        sys.exit(0)
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        stop_all()
        print(f"interrupted {e}; every started process stopped", file=sys.stderr)
        sys.exit(130)
