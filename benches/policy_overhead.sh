#!/usr/bin/env bash
# Overhead of the dependency firewall on cached packument serving: the same warm packument
# requested through two sluice instances on loopback, one without policy and one with 10,000
# rules and a generated 200,000-advisory OSV database, side by side.
#
#   benches/policy_overhead.sh            (PACKAGE=semver DURATION=5s)
#
# The npm upstream is the one `npm config get registry` names; it is contacted once per
# instance to warm the cache. Everything started here is stopped by pid at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE="${PACKAGE:-semver}"
DURATION="${DURATION:-5s}"
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
REGISTRY="$(npm config get registry)"
cargo build --release --bin sluice >/dev/null
BIN="$PWD/target/release/sluice"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "generating 10,000 rules and a 200,000-advisory OSV zip..." >&2
python3 - "$WORK" <<'PY'
import json, sys, zipfile, random
work = sys.argv[1]
random.seed(7)
with open(f"{work}/rules.toml", "w") as f:
    f.write('[policy]\nmode = "enforce"\nosv = ["%s/npm-all.zip"]\n' % work)
    for i in range(10000):
        if i % 10 == 0:
            pkg = f"@corp{i}/*"
        elif i % 10 == 1:
            pkg = f"corp-{i}-*"
        else:
            pkg = f"corp-pkg-{i}"
        f.write(f'\n[[policy.rule]]\nid = "r{i}"\nkind = "deny"\nformat = "npm"\npackage = "{pkg}"\nversions = "<{i % 5 + 1}.0.0"\nreason = "generated"\n')
with zipfile.ZipFile(f"{work}/npm-all.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for i in range(200000):
        name = f"osv-pkg-{i % 50000}"
        adv = {"id": f"GHSA-gen-{i}", "modified": "2024-01-01T00:00:00Z",
               "summary": "generated", "database_specific": {"severity": "HIGH"},
               "affected": [{"package": {"ecosystem": "npm", "name": name},
                             "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": f"{i % 7 + 1}.0.0"}]}]}]}
        if i % 100 == 0:
            adv["id"] = f"MAL-gen-{i}"
        z.writestr(f"{adv['id']}.json", json.dumps(adv))
PY

start() { # name port extra-config-file
  local name=$1 port=$2 extra=$3
  cat > "$WORK/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
shutdown_grace = "1s"
[storage]
data_dir = "$WORK/$name-data"
[[upstream]]
name = "npmjs"
format = "npm"
url = "$REGISTRY"
metadata_ttl = "1h"
TOML
  [ -n "$extra" ] && cat "$extra" >> "$WORK/$name.toml"
  RUST_LOG=warn "$BIN" serve --config "$WORK/$name.toml" 2>"$WORK/$name.log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$port/-/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$name did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1
}

P0=$(free_port); start plain "$P0" ""
P1=$(free_port); start policy "$P1" "$WORK/rules.toml"
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status"; }
row() { # label port pid
  local url="http://127.0.0.1:$2/npmjs/$PACKAGE"
  curl -fs -o /dev/null "$url"; curl -fs -o /dev/null "$url"
  local out; out=$(wrk -t2 -c32 -d"$DURATION" --latency "$url")
  local rps p99; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$1|$rps|$p99|$(rss "$3")"
}
A=$(row "no policy" "$P0" "${PIDS[0]}")
B=$(row "10,000 rules + 200k advisories" "$P1" "${PIDS[1]}")
echo
echo "| sluice | packument req/s | p99 | RSS MiB |"
echo "|---|---:|---:|---:|"
for r in "$A" "$B"; do IFS='|' read -r l q p m <<<"$r"; echo "| $l | $q | $p | $m |"; done
qa=$(cut -d'|' -f2 <<<"$A"); qb=$(cut -d'|' -f2 <<<"$B")
python3 -c "print(f'\nwith policy / without: {float($qb)/float($qa):.2f}x requests/s (package $PACKAGE, wrk -t2 -c32 -d$DURATION)')"
