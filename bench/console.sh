#!/usr/bin/env bash
# Web console benchmark (issue #15): NODES nodes registered in a daemon running in a network
# namespace made for the run, then the console loaded RUNS times in headless Chromium (in
# that namespace too) with an empty cache. Prints what the first load transferred and when
# the page was interactive (every node's row on screen), against the targets: < 200 KB and
# < 1 s with 1,000 nodes. No peer: the target is absolute.
# Usage (root): bench/console.sh [nodes, default 1000] [runs, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
NODES=${1:-1000}
RUNS=${2:-5}
require_tools chromium chromedriver socat "scripts/test (as root) installs chromium, chromium-driver and socat"
cargo build --release --quiet -p lacave --bin lacave -p lacave-integration-tests --bin lacave-consolebench
bench_setup console
mkdir -m 0700 "$work/state"
cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
server_ip = "10.80.0.1"
[http]
listen = "127.0.0.1:8080"
[api]
listen = "127.0.0.1:8443"
tls = false
TOML
# Started with `ip netns exec` directly (not a shell function), so that $! is the server.
LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" \
    >"$work/lacave.out" 2>"$work/lacave.log" &
pids+=($!)
for _ in $(seq 50); do in_ns curl -sf http://127.0.0.1:8443/healthz >/dev/null && break; sleep 0.1; done
target/release/lacave-consolebench --ns "$ns" --port 8443 --token-file "$work/state/api-token" \
    --nodes "$NODES" --runs "$RUNS"
