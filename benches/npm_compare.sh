#!/usr/bin/env bash
# npm: sluice beside Verdaccio 5, in one run, on loopback.
#
#  1. cached packument requests/s:  wrk -t2 -c32 -d${DURATION} URL   (full form, then the
#     abbreviated form with `Accept: application/vnd.npm.install-v1+json`);
#  2. warm `npm ci` of a ~220-package lockfile (express, eslint, yargs, glob, semver,
#     @types/node and their dependencies) with an empty npm cache each time, after one cold
#     install through the same server; median of ${RUNS} runs.
#
# Both servers proxy the registry npm itself uses (`npm config get registry`, asked at run
# time; no registry host is written here). Verdaccio 5 is installed into a private prefix
# with npm on first use (Node 20; node-fetch pinned as NOTES.md says). Only loopback is
# loaded; everything this script starts is stopped by pid at the end.
#
# Usage: benches/npm_compare.sh        (PACKAGE=semver DURATION=5s RUNS=3 by default)
# Prints a markdown table with sluice's ratio to Verdaccio.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/bench-lib.sh
source benches/bench-lib.sh

PACKAGE=${PACKAGE:-semver}
DURATION=${DURATION:-5s}
RUNS=${RUNS:-3}
CORGI='application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*'
WORK=$(mktemp -d -t sluice-npm-bench-XXXXXX)
PIDS=()

cleanup() {
  bench_stop "${PIDS[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT

for t in wrk npm node curl python3; do
  command -v "$t" >/dev/null || { echo "$t is required" >&2; exit 1; }
done
REGISTRY=$(bench_npm_registry)

echo "building sluice (release)..." >&2
cargo build --release -q

VERDACCIO=$(bench_verdaccio)

# --- start the servers ---------------------------------------------------------------
SLUICE_PORT=$(bench_free_port)
cat >"$WORK/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$SLUICE_PORT"
[storage]
data_dir = "$WORK/sluice-data"
[[upstream]]
name = "npmjs"
format = "npm"
url = "$REGISTRY"
metadata_ttl = "1h"
EOF
RUST_LOG=warn target/release/sluice serve --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 &
PIDS+=($!)
SLUICE_PID=$!

VERD_PORT=$(bench_free_port)
cat >"$WORK/verdaccio.yaml" <<EOF
storage: $WORK/verdaccio-storage
uplinks:
  up:
    url: $REGISTRY
    timeout: 60s
    maxage: 1h
packages:
  '@*/*':
    access: \$all
    proxy: up
  '**':
    access: \$all
    proxy: up
listen: 127.0.0.1:$VERD_PORT
max_body_size: 100mb
log: { type: stdout, format: pretty, level: warn }
EOF
"$VERDACCIO" --config "$WORK/verdaccio.yaml" >"$WORK/verdaccio.log" 2>&1 &
PIDS+=($!)
VERD_PID=$!

declare -A REG=(
  [sluice]="http://127.0.0.1:$SLUICE_PORT/npmjs/"
  [verdaccio]="http://127.0.0.1:$VERD_PORT/"
)
declare -A PID=([sluice]=$SLUICE_PID [verdaccio]=$VERD_PID)
ORDER=(sluice verdaccio)

for s in "${ORDER[@]}"; do
  ok=
  for _ in $(seq 120); do
    if curl -sf -o /dev/null "${REG[$s]}$PACKAGE"; then ok=1; break; fi
    sleep 0.5
  done
  [[ -n $ok ]] || { echo "$s did not serve ${REG[$s]}$PACKAGE; log:" >&2; tail -20 "$WORK/$s.log" >&2; exit 1; }
  for _ in 1 2 3; do
    curl -sf -o /dev/null "${REG[$s]}$PACKAGE"
    curl -sf -o /dev/null -H "Accept: $CORGI" "${REG[$s]}$PACKAGE"
  done
done

LOAD=$(cut -d" " -f1 /proc/loadavg)

# --- packument requests/s --------------------------------------------------------------
rps() { # url [accept]
  local args=(-t2 -c32 -d"$DURATION")
  [[ -n ${2:-} ]] && args+=(-H "Accept: $2")
  wrk "${args[@]}" "$1" | awk '/Requests\/sec/ {print $2}'
}
size() { # url [accept]
  local h=()
  [[ -n ${2:-} ]] && h=(-H "Accept: $2")
  curl -s -o /dev/null -w '%{size_download}' "${h[@]}" "$1"
}
declare -A FULL_RPS CORGI_RPS FULL_SIZE CORGI_SIZE
for s in "${ORDER[@]}"; do
  echo "wrk against $s ..." >&2
  FULL_SIZE[$s]=$(size "${REG[$s]}$PACKAGE")
  CORGI_SIZE[$s]=$(size "${REG[$s]}$PACKAGE" "$CORGI")
  FULL_RPS[$s]=$(rps "${REG[$s]}$PACKAGE")
  CORGI_RPS[$s]=$(rps "${REG[$s]}$PACKAGE" "$CORGI")
done

# --- npm ci of a ~220-package lockfile ---------------------------------------------------
npm_in() { # server dir cache args...
  local s=$1 dir=$2 cache=$3
  shift 3
  printf 'registry=%s\n' "${REG[$s]}" >"$dir.npmrc"
  (cd "$dir" && npm "$@" --userconfig "$dir.npmrc" --cache "$cache" --no-audit --no-fund \
    --no-update-notifier --ignore-scripts --omit-lockfile-registry-resolved=false \
    --loglevel=error >/dev/null)
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A CI_S COLD_S PKGS RSS TIMES
for s in "${ORDER[@]}"; do
  dir="$WORK/proj-$s"
  mkdir -p "$dir"
  cat >"$dir/package.json" <<'EOF'
{"name":"bench","version":"1.0.0","private":true,"dependencies":{"express":"4.21.2","eslint":"8.57.1","yargs":"17.7.2","glob":"10.4.5","semver":"7.6.3","@types/node":"20.17.10"}}
EOF
  echo "cold npm install through $s ..." >&2
  t0=$(date +%s.%N)
  npm_in "$s" "$dir" "$WORK/cache-$s-cold" install
  COLD_S[$s]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
  PKGS[$s]=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["packages"]) - 1)' "$dir/package-lock.json")
  TIMES[$s]=
done
# Warm runs alternate between the servers, so that load from anything else on the machine
# falls on both alike.
for i in $(seq "$RUNS"); do
  for s in "${ORDER[@]}"; do
    dir="$WORK/proj-$s"
    rm -rf "$dir/node_modules" "$WORK/cache-$s-$i"
    echo "warm npm ci through $s ($i/$RUNS) ..." >&2
    t0=$(date +%s.%N)
    npm_in "$s" "$dir" "$WORK/cache-$s-$i" ci
    TIMES[$s]+=" $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')"
  done
done
for s in "${ORDER[@]}"; do
  # shellcheck disable=SC2086 # the recorded times are split into arguments on purpose
  CI_S[$s]=$(median ${TIMES[$s]})
  RSS[$s]=$(awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/${PID[$s]}/status" 2>/dev/null || echo "?")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f×", a / b; else print "n/a" }'; }

echo
echo "npm, loopback, $(nproc) cores. Packument \`$PACKAGE\`: wrk -t2 -c32 -d$DURATION (full: no Accept; abbreviated: Accept: application/vnd.npm.install-v1+json). npm ci: ${PKGS[sluice]}-package lockfile, empty npm cache, --ignore-scripts, median of $RUNS (servers alternating), after one cold install; load average at start: $LOAD."
echo
echo "| server | full packument req/s (bytes) | abbreviated req/s (bytes) | cold npm install s | warm npm ci s | RSS MB after |"
echo "|---|---:|---:|---:|---:|---:|"
for s in "${ORDER[@]}"; do
  echo "| $s | ${FULL_RPS[$s]} (${FULL_SIZE[$s]}) | ${CORGI_RPS[$s]} (${CORGI_SIZE[$s]}) | ${COLD_S[$s]} | ${CI_S[$s]} | ${RSS[$s]} |"
done
echo "| **sluice ÷ verdaccio** | $(ratio "${FULL_RPS[sluice]}" "${FULL_RPS[verdaccio]}") | $(ratio "${CORGI_RPS[sluice]}" "${CORGI_RPS[verdaccio]}") | $(ratio "${COLD_S[verdaccio]}" "${COLD_S[sluice]}") faster | $(ratio "${CI_S[verdaccio]}" "${CI_S[sluice]}") faster | |"
