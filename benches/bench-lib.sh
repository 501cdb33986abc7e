# shellcheck shell=bash
# Shared by the benchmark scripts (benches/compare, npm_compare.sh, pypi_compare.sh); source
# it from the repository root. Private tool installs under target/bench-tools (nothing is
# installed system-wide), free loopback ports, the discovered npm registry, and stopping
# by pid what a script started.
#
#   bench_apt_tool CMD PKG   CMD runnable: the system's, else PKG (and the libraries it
#                            needs that are not installed) unpacked from Debian's archive
#                            into $BENCH_TOOLS/apt, run through a wrapper in $BENCH_TOOLS/bin
#   bench_verdaccio          Verdaccio 5 in $VERDACCIO_PREFIX; prints its executable
#   bench_pypi_peers         devpi-server, devpi-client, proxpi, gunicorn in $PEERS_VENV
#   bench_npm_registry       the registry npm uses, with a trailing slash
#   bench_free_port          a free loopback port
#   bench_stop PID...        SIGTERM, up to 5 s, then SIGKILL; each by pid

BENCH_TOOLS=${BENCH_TOOLS:-target/bench-tools}
[[ $BENCH_TOOLS == /* ]] || BENCH_TOOLS=$PWD/$BENCH_TOOLS
VERDACCIO_PREFIX=${VERDACCIO_PREFIX:-$BENCH_TOOLS/verdaccio}
[[ $VERDACCIO_PREFIX == /* ]] || VERDACCIO_PREFIX=$PWD/$VERDACCIO_PREFIX
PEERS_VENV=${PEERS_VENV:-$BENCH_TOOLS/pypi-peers}
[[ $PEERS_VENV == /* ]] || PEERS_VENV=$PWD/$PEERS_VENV
export PATH="$BENCH_TOOLS/bin:$PATH"

bench_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_stop() {
  local p
  for p in "$@"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}

bench_npm_registry() {
  local r
  r=$(npm config get registry)
  [[ $r == http* ]] || { echo "npm names no registry" >&2; return 1; }
  [[ $r == */ ]] || r="$r/"
  printf '%s\n' "$r"
}

_bench_apt_updated=
_bench_apt_fetch() { # pkg... : downloads into $BENCH_TOOLS/apt/debs, unpacks into .../root
  local debs=$BENCH_TOOLS/apt/debs root=$BENCH_TOOLS/apt/root
  mkdir -p "$debs" "$root"
  if ! (cd "$debs" && apt-get download -q "$@" >/dev/null 2>&1); then
    if [[ -z $_bench_apt_updated ]]; then
      _bench_apt_updated=1
      local sudo=()
      [[ $(id -u) -eq 0 ]] || sudo=(sudo)
      "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
    fi
    (cd "$debs" && apt-get download -q "$@" >/dev/null 2>&1) || return 1
  fi
  local p f
  for p in "$@"; do
    for f in "$debs/${p}_"*.deb; do
      [[ -e $f ]] && dpkg-deb -x "$f" "$root"
    done
  done
}

_bench_missing_lib_deps() { # deb file -> library packages it depends on that are not installed
  local d name
  dpkg-deb -f "$1" Depends | tr ',' '\n' | while read -r d; do
    name=${d%%|*}
    name=${name%%(*}
    name=${name// /}
    [[ $name == lib* ]] || continue
    dpkg-query -W -f='${db:Status-Status}' "$name" 2>/dev/null | grep -qx installed || echo "$name"
  done
}

bench_apt_tool() { # cmd pkg
  local cmd=$1 pkg=$2 root=$BENCH_TOOLS/apt/root bin dir f
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "installing $pkg (for $cmd) into $BENCH_TOOLS/apt..." >&2
  command -v apt-get >/dev/null || { echo "$cmd is required (no apt-get to fetch $pkg)" >&2; return 1; }
  _bench_apt_fetch "$pkg" || { echo "apt-get download $pkg failed" >&2; return 1; }
  local libs=()
  for f in "$BENCH_TOOLS/apt/debs/${pkg}_"*.deb; do
    mapfile -t -O "${#libs[@]}" libs < <(_bench_missing_lib_deps "$f")
  done
  if ((${#libs[@]})); then
    _bench_apt_fetch "${libs[@]}" || { echo "apt-get download ${libs[*]} failed" >&2; return 1; }
  fi
  bin=
  for dir in usr/bin usr/sbin bin sbin; do
    [[ -x $root/$dir/$cmd ]] && { bin=$root/$dir/$cmd; break; }
  done
  [[ -n $bin ]] || { echo "$pkg has no $cmd" >&2; return 1; }
  mkdir -p "$BENCH_TOOLS/bin"
  cat >"$BENCH_TOOLS/bin/$cmd" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$bin" "\$@"
EOF
  chmod +x "$BENCH_TOOLS/bin/$cmd"
  if "$BENCH_TOOLS/bin/$cmd" -h 2>&1 | grep -q 'error while loading shared libraries'; then
    echo "$cmd from $pkg misses a shared library:" >&2
    "$BENCH_TOOLS/bin/$cmd" -h 2>&1 | head -3 >&2
    return 1
  fi
}

bench_verdaccio() {
  if [[ ! -x "$VERDACCIO_PREFIX/node_modules/.bin/verdaccio" ]]; then
    echo "installing verdaccio@5 into $VERDACCIO_PREFIX..." >&2
    mkdir -p "$VERDACCIO_PREFIX"
    # node-fetch pinned: see NOTES.md ("Peers and tools").
    cat >"$VERDACCIO_PREFIX/package.json" <<'EOF'
{"name":"bench-verdaccio","private":true,"dependencies":{"verdaccio":"5"},"overrides":{"node-fetch":"2.7.0"}}
EOF
    (cd "$VERDACCIO_PREFIX" && npm install --no-audit --no-fund --loglevel=error >/dev/null) || return 1
  fi
  printf '%s\n' "$VERDACCIO_PREFIX/node_modules/.bin/verdaccio"
}

bench_pypi_peers() {
  if [[ ! -x "$PEERS_VENV/bin/devpi-server" || ! -x "$PEERS_VENV/bin/devpi" ||
    ! -x "$PEERS_VENV/bin/gunicorn" ]]; then
    echo "installing devpi-server, devpi-client, proxpi, gunicorn into $PEERS_VENV..." >&2
    python3 -m venv "$PEERS_VENV" &&
      "$PEERS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        devpi-server devpi-client proxpi gunicorn || return 1
  fi
}
