#!/usr/bin/env bash
# Cached simple-page requests/s: sluice beside devpi-server and proxpi, in one run, on
# loopback. Each server is started here (sluice: release build; peers: from PyPI into a
# private venv), warmed with the same project page, then measured with
#   wrk -t2 -c32 -d${DURATION} URL                      (HTML)
#   wrk -t2 -c32 -d${DURATION} -H 'Accept: <PEP 691 JSON>' URL   (JSON)
# Every server uses its own default upstream index (pip's, for sluice: asked at start); no
# index host is written here. Only loopback is loaded; everything started is stopped by pid.
#
# Usage: benches/pypi_compare.sh            (PROJECT=six DURATION=5s by default)
# Prints a markdown table with sluice's ratio to each peer.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/bench-lib.sh
source benches/bench-lib.sh

PROJECT=${PROJECT:-six}
DURATION=${DURATION:-5s}
JSON=application/vnd.pypi.simple.v1+json
VENV=$PEERS_VENV
WORK=$(mktemp -d -t sluice-pypi-bench-XXXXXX)
PIDS=()

cleanup() {
  bench_stop "${PIDS[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT

bench_apt_tool wrk wrk

echo "building sluice (release)..." >&2
cargo build --release -q

bench_pypi_peers

# --- start the servers ---------------------------------------------------------------
SLUICE_PORT=$(bench_free_port)
cat >"$WORK/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$SLUICE_PORT"
[storage]
data_dir = "$WORK/sluice-data"
[[upstream]]
name = "pypi"
format = "pypi"
url = ""
EOF
RUST_LOG=warn target/release/sluice serve --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 &
PIDS+=($!)

DEVPI_PORT=$(bench_free_port)
"$VENV/bin/devpi-init" --serverdir "$WORK/devpi" >"$WORK/devpi-init.log" 2>&1
"$VENV/bin/devpi-server" --serverdir "$WORK/devpi" --host 127.0.0.1 --port "$DEVPI_PORT" \
  >"$WORK/devpi.log" 2>&1 &
PIDS+=($!)

PROXPI_PORT=$(bench_free_port)
(cd "$WORK" && exec "$VENV/bin/gunicorn" --bind "127.0.0.1:$PROXPI_PORT" --workers 2 \
  --log-level warning --timeout 600 --no-control-socket 'proxpi.server:app') >"$WORK/proxpi.log" 2>&1 &
PIDS+=($!)

declare -A URL=(
  [sluice]="http://127.0.0.1:$SLUICE_PORT/pypi/simple/$PROJECT/"
  [devpi]="http://127.0.0.1:$DEVPI_PORT/root/pypi/+simple/$PROJECT/"
  [proxpi]="http://127.0.0.1:$PROXPI_PORT/index/$PROJECT/"
)
ORDER=(sluice devpi proxpi)

# --- warm: until each answers 200 with the project's files (devpi may 404 at first) ----
for s in "${ORDER[@]}"; do
  ok=
  for _ in $(seq 120); do
    if curl -sf -o "$WORK/$s.html" "${URL[$s]}" && grep -q "$PROJECT-" "$WORK/$s.html"; then
      ok=1
      break
    fi
    sleep 0.5
  done
  [[ -n $ok ]] || { echo "$s did not serve ${URL[$s]}; log:" >&2; tail -20 "$WORK/$s.log" >&2; exit 1; }
  for _ in 1 2 3; do
    curl -sf -o /dev/null "${URL[$s]}"
    curl -sf -o /dev/null -H "Accept: $JSON" "${URL[$s]}"
  done
done

# --- measure -------------------------------------------------------------------------
rps() { # url [accept]
  local args=(-t2 -c32 -d"$DURATION" --latency)
  [[ -n ${2:-} ]] && args+=(-H "Accept: $2")
  wrk "${args[@]}" "$1" | awk '/Requests\/sec/ {print $2}'
}
probe() { # what url [accept]
  local h=()
  [[ -n ${3:-} ]] && h=(-H "Accept: $3")
  curl -s -o /dev/null -w "%{$1}" "${h[@]}" "$2"
}

declare -A HTML_RPS JSON_RPS JSON_CT HTML_SIZE JSON_SIZE
for s in "${ORDER[@]}"; do
  HTML_SIZE[$s]=$(probe size_download "${URL[$s]}")
  JSON_SIZE[$s]=$(probe size_download "${URL[$s]}" "$JSON")
  JSON_CT[$s]=$(probe content_type "${URL[$s]}" "$JSON")
  echo "measuring $s ..." >&2
  HTML_RPS[$s]=$(rps "${URL[$s]}")
  JSON_RPS[$s]=$(rps "${URL[$s]}" "$JSON")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f×", a / b; else print "n/a" }'; }

echo
echo "Cached simple page \`$PROJECT\`, wrk -t2 -c32 -d$DURATION, loopback, $(nproc) cores"
echo
echo "| server | HTML req/s | HTML bytes | JSON req/s | JSON bytes (content type) | sluice ÷ server (HTML / JSON) |"
echo "|---|---:|---:|---:|---|---:|"
for s in "${ORDER[@]}"; do
  json_note="${JSON_SIZE[$s]} (${JSON_CT[$s]})"
  echo "| $s | ${HTML_RPS[$s]} | ${HTML_SIZE[$s]} | ${JSON_RPS[$s]} | $json_note | $(ratio "${HTML_RPS[sluice]}" "${HTML_RPS[$s]}") / $(ratio "${JSON_RPS[sluice]}" "${JSON_RPS[$s]}") |"
done
