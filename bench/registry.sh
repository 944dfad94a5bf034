#!/usr/bin/env bash
# Registry benchmark (issue: Foundation). Starts a release build of the daemon on loopback with
# its state on disk (not tmpfs: durability must cost what it costs), then measures
#   1. durable node registrations per second with 16 concurrent clients (targets: >= 1,000/s)
#   2. p99 latency of GET /api/v1/nodes with 1,000 nodes stored (target: < 5 ms).
# Usage: bench/registry.sh [--clients N] [--nodes N]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p lacave --bin lacave -p lacave-integration-tests --bin lacave-bench

work=$(mktemp -d "${BENCH_DIR:-$PWD/target}/bench-registry.XXXXXX")
daemon_pid=""
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
[http]
listen = "127.0.0.1:$port"
TOML
LACAVE_LOG=warn "${LACAVE_BIN:-target/release/lacave}" serve --config "$work/lacave.toml" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "machine: $(nproc) cores, state on $(df --output=source,fstype "$work" | tail -1)"
target/release/lacave-bench --url "http://127.0.0.1:$port" --token-file "$work/state/api-token" "$@"
# Peak RSS counts the pages of the executable it has mapped (~15-20 MB of a 190 MB unstripped
# binary, shared with the page cache); RssAnon is the daemon's own memory at the end.
echo "daemon peak RSS: $(grep VmHWM /proc/$daemon_pid/status | awk '{print $2 " " $3}'), anonymous (own) memory at the end: $(grep RssAnon /proc/$daemon_pid/status | awk '{print $2 " " $3}')"
