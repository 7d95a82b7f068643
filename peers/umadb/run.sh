#!/usr/bin/env bash
# Side-by-side peer benchmark: UmaDB 0.7.8 under the "fresh counter" DCB workload (see README.md).
#
#   peers/umadb/run.sh [--clients N] [--duration SECS]
#
# Installs the UmaDB server into peers/umadb/.tools if missing, builds the bench client, starts the
# server on a fresh temporary data directory (under $TMPDIR, default /tmp) and a free local port,
# runs the client, then stops the server and removes the data directory.
set -euo pipefail

UMADB_VERSION=0.7.8
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/.tools"
server_bin="$tools/bin/umadb"
# One target dir for the server's `cargo install` and the client's build: the client then reuses
# the server's compiled dependencies (tonic, aws-lc, tokio, ...; Cargo.lock starts from umadb's).
target_dir="$here/target/install"
client_bin="$target_dir/release/umadb-peer-bench"

die() {
    echo "run.sh: error: $*" >&2
    exit 1
}

clients=8
duration=10
while [ $# -gt 0 ]; do
    case "$1" in
        --clients)
            [ $# -ge 2 ] || die "--clients needs a value"
            clients="$2"
            shift 2
            ;;
        --duration)
            [ $# -ge 2 ] || die "--duration needs a value"
            duration="$2"
            shift 2
            ;;
        -h | --help)
            sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$1' (expected --clients N, --duration SECS)" ;;
    esac
done
[[ "$clients" =~ ^[1-9][0-9]*$ ]] || die "--clients must be a positive integer, got '$clients'"
[[ "$duration" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--duration must be a number of seconds, got '$duration'"

for tool in cargo getconf ss mktemp; do
    command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done
# umadb-proto (a dependency of both the server and the client) runs protoc in its build script,
# so the first build needs it.
if { [ ! -x "$server_bin" ] || [ ! -x "$client_bin" ]; } &&
    [ -z "${PROTOC:-}" ] && ! command -v protoc >/dev/null; then
    die "'protoc' not found: building umadb needs the Protocol Buffers compiler (Debian: apt-get install protobuf-compiler, or set PROTOC)"
fi
[ -r /proc/self/stat ] || die "/proc is not mounted: CPU accounting needs /proc/<pid>/stat"

# 1. The server (crate `umadb`, binary `umadb`).
if [ ! -x "$server_bin" ]; then
    echo "run.sh: installing umadb $UMADB_VERSION into $tools (one-off, several minutes)" >&2
    cargo install umadb --version "$UMADB_VERSION" --locked --root "$tools" \
        --target-dir "$target_dir" ||
        die "cargo install umadb $UMADB_VERSION failed (crates.io reachable? C compiler present?)"
fi
[ -x "$server_bin" ] || die "server binary $server_bin missing after install"
installed="$("$server_bin" --version 2>/dev/null || true)"
[[ "$installed" == *"$UMADB_VERSION"* ]] ||
    die "$server_bin reports '$installed', expected version $UMADB_VERSION (delete $tools to reinstall)"

# 2. The bench client.
cargo build --release --locked --quiet --manifest-path "$here/Cargo.toml" --target-dir "$target_dir" || die "building the bench client failed"
[ -x "$client_bin" ] || die "client binary $client_bin missing after build"

# 3. A fresh data directory and a free port.
workdir="$(mktemp -d "${TMPDIR:-/tmp}/umadb-bench.XXXXXX")" || die "mktemp failed"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$server_pid" 2>/dev/null && kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=""
for _ in $(seq 100); do
    candidate=$((20000 + RANDOM % 40000))
    if [ -z "$(ss -Htln "sport = :$candidate")" ]; then
        port="$candidate"
        break
    fi
done
[ -n "$port" ] || die "no free local port found"

# 4. Start the server, with its defaults (no UMADB_* setting inherited), and wait until it listens.
mkdir "$workdir/data"
while read -r var; do unset "$var"; done < <(compgen -e | grep '^UMADB_' || true)
"$server_bin" --listen "127.0.0.1:$port" --db-path "$workdir/data" >"$workdir/server.log" 2>&1 &
server_pid=$!
ready=""
for _ in $(seq 300); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$workdir/server.log" >&2
        die "the umadb server exited during startup (log above)"
    fi
    if [ -n "$(ss -Htln "sport = :$port")" ]; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    cat "$workdir/server.log" >&2
    die "the umadb server did not listen on 127.0.0.1:$port within 30 s (log above)"
fi

echo "umadb $UMADB_VERSION pid $server_pid on 127.0.0.1:$port, data in $workdir/data ($(stat -f -c %T "$workdir"))"

# 5. The benchmark.
status=0
"$client_bin" --url "http://127.0.0.1:$port" --clients "$clients" --duration "$duration" \
    --server-pid "$server_pid" --clk-tck "$(getconf CLK_TCK)" || status=$?
kill -0 "$server_pid" 2>/dev/null || {
    cat "$workdir/server.log" >&2
    die "the umadb server died during the run (log above)"
}
[ "$status" -eq 0 ] || die "the bench client failed (exit status $status)"
