#!/usr/bin/env bash
# Memory per discovered machine (issue #16). In a network namespace, lacave in full DHCP mode
# with `unknown_clients = "discover"` and the discovery bounds raised (`[discovery]
# max_machines = 100000`, no rate limit) meets perfdhcp as a relay agent offering a new client
# MAC per exchange; every new MAC becomes a discovered machine (node, index, event, lease). The
# daemon's RSS is read before, half-way and at the end; printed: bytes per machine recorded over
# the whole run (fixed caches included: sled's 8 MB page cache, the event feed's ring) and
# over the second half only (what one more machine costs once the bounded caches are full).
# Usage (root): bench/discovery-memory.sh [machines, default 60000] [exchanges/s, default 5000]
# LACAVE_BIN=path runs another build. Keep machines under 64,000 (the pool's size).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
MACHINES=${1:-60000}
RATE=${2:-5000}
require_tools perfdhcp "sudo scripts/test installs kea-admin (perfdhcp)"
if [ -z "${LACAVE_BIN:-}" ]; then
    cargo build --release --quiet -p lacave --bin lacave
    LACAVE_BIN=target/release/lacave
fi
bench_setup dmem
client_netns bms0 bmc0 10.69.0.1/16 10.69.0.2/16

cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
server_ip = "10.69.0.1"
[http]
listen = "10.69.0.1:8080"
[dhcp]
mode = "full"
interface = "bms0"
subnet = "10.69.0.0/16"
pool = "10.69.1.0-10.69.250.254"
unknown_clients = "discover"
[discovery]
max_machines = 100000
new_per_minute = 100000000
TOML
LACAVE_LOG=warn ip netns exec "$ns" env ${MALLOC_ARENA_MAX:+MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX} "$LACAVE_BIN" serve --config "$work/lacave.toml" 2>"$work/lacave.log" &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 100); do
    [ -f "$work/state/api-token" ] && in_ns curl -fsS -o /dev/null http://10.69.0.1:8080/healthz 2>/dev/null && break
    sleep 0.1
done

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status"; }
recorded() {
    in_ns curl -fsS -H "Authorization: Bearer $(cat "$work/state/api-token")" http://10.69.0.1:8080/metrics |
        awk '/^lacave_discovered_machines_total\{outcome="recorded"\}/ { print $2 }'
}
half() { # base MAC: runs perfdhcp for half the machines (perfdhcp's random MACs repeat from run to run: another base each half)
    local secs=$(( (MACHINES / 2 + RATE - 1) / RATE ))
    ip netns exec "$cli" perfdhcp -4 -l 10.69.0.2 -r "$RATE" -R 100000000 -b "mac=$1" -p "$secs" 10.69.0.1 2>&1 |
        awk '/^Rate:/ { printf "perfdhcp: %s exchanges/s; ", $2 } /drops ratio:/ { printf "drops %s ", $3 } END { print "" }' >&2 || true
    sleep 2 # the last flushes
}

rss0=$(rss_kb); n0=$(recorded)
half 02:0c:01:00:00:00
rss1=$(rss_kb); n1=$(recorded)
half 02:0c:02:00:00:00
rss2=$(rss_kb); n2=$(recorded)
printf 'RSS %s KB at start (%s machines), %s KB after %s, %s KB after %s\n' "$rss0" "$n0" "$rss1" "$n1" "$rss2" "$n2"
awk -v r0="$rss0" -v r1="$rss1" -v r2="$rss2" -v n0="$n0" -v n1="$n1" -v n2="$n2" 'BEGIN {
    printf "RESULT bytes per discovered machine: %.0f over the run (caches included), %.0f for the second half (target <= 300)\n",
        (r2 - r0) * 1024 / (n2 - n0), (r2 - r1) * 1024 / (n2 - n1)
}'
