#!/usr/bin/env bash
# Boot-storm benchmark (issue: boot flow). In a network namespace it creates and removes,
# CLIENTS simulated machines at once, each from its own address and registered with it, fetch
# boot.ipxe, their per-MAC script, both Ignition configs and an INITRD_MB initrd from the
# mirror: first from nginx (sendfile) serving the same layout as static files, then from
# lacave. Prints aggregate throughput, p99 of scripts and configs, lacave's peak RSS, and the
# lacave/nginx throughput ratio (higher is better; target >= 0.9).
# Usage (root): bench/boot.sh [clients, default 100] [initrd MB, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
CLIENTS=${1:-100}
INITRD_MB=${2:-300}
require_tools nginx curl "sudo scripts/test installs nginx-light"
cargo build --release --quiet -p lacave --bin lacave -p lacave-integration-tests --bin lacave-bootstorm
bench_setup boot
ip -n "$ns" addr add 10.71.0.1/32 dev lo
ip -n "$ns" addr add 10.71.0.2/32 dev lo
for i in $(seq 0 $((CLIENTS - 1))); do
    ip -n "$ns" addr add "10.71.$((1 + i / 250)).$((1 + i % 250))/32" dev lo
done
mirror="$work/mirror/stable/amd64-usr/current"
mkdir -p "$mirror"
head -c "$((INITRD_MB * 1024 * 1024))" /dev/urandom > "$mirror/flatcar_production_pxe_image.cpio.gz"
initrd=mirror/stable/amd64-usr/current/flatcar_production_pxe_image.cpio.gz

cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
server_ip = "10.71.0.1"
[http]
listen = "10.71.0.1:8080"
mirror_listen = "10.71.0.1:8081"
[flatcar]
mirror_dir = "$work/mirror"
# The simulated machines are addresses of one interface, not machines with their own MAC.
check_peer = false
TOML
LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" 2>"$work/lacave.log" &
pids+=($!)
lacave_pid=$!
for _ in $(seq 50); do [ -f "$work/state/api-token" ] && break; sleep 0.1; done
sleep 0.5
token=$(cat "$work/state/api-token")
for i in $(seq 0 $((CLIENTS - 1))); do
    mac=$(printf '52:54:00:71:%02x:%02x' $((i >> 8)) $((i & 255)))
    ip="10.71.$((1 + i / 250)).$((1 + i % 250))"
    in_ns curl -sf -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"mac\":\"$mac\",\"hostname\":\"storm$i\",\"ip\":\"$ip\",\"role\":\"worker\"}" \
        http://10.71.0.1:8080/api/v1/nodes
done

# nginx gets the same layout as static files: the daemon's own answers for one node, copied
# per node (same sizes), and the same mirror.
static="$work/static"
mkdir -p "$static/ipxe" "$static/ignition"
in_ns curl -sf -o "$static/boot.ipxe" http://10.71.0.1:8080/boot.ipxe
for what in ipxe install final; do
    in_ns curl -sf -o "$work/sample.$what" -H "Authorization: Bearer $token" \
        "http://10.71.0.1:8080/api/v1/nodes/storm0/render/$what"
done
for i in $(seq 0 $((CLIENTS - 1))); do
    seg=$(printf '52-54-00-71-%02x-%02x' $((i >> 8)) $((i & 255)))
    cp "$work/sample.ipxe" "$static/ipxe/$seg"
    mkdir -p "$static/ignition/$seg"
    cp "$work/sample.install" "$static/ignition/$seg/install"
    cp "$work/sample.final" "$static/ignition/$seg/final"
done
ln -s "$work/mirror" "$static/mirror"
cat > "$work/nginx.conf" <<NGINX
user root;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server { listen 10.71.0.2:8080; root $static; }
}
NGINX
ip netns exec "$ns" nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
sleep 0.5

run() { # name base [initrd base]
    local out
    out=$(in_ns target/release/lacave-bootstorm --base "$2" --initrd-base "${3:-$2}" --clients "$CLIENTS" --first-ip 10.71.1.1 --initrd "$initrd")
    printf '%-7s %s\n' "$1" "$out" >&2
    echo "$out" | sed -n 's/.*MBps=\([0-9]*\).*/\1/p'
}
echo "$CLIENTS clients, initrd ${INITRD_MB} MB each; $(nproc) cores"
mb_nginx=$(run nginx http://10.71.0.2:8080)
mb_ours=$(run lacave http://10.71.0.1:8080 http://10.71.0.1:8081)
rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$lacave_pid/status")
state=$(in_ns curl -sf -H "Authorization: Bearer $token" http://10.71.0.1:8080/api/v1/nodes | grep -o '"state":"installing"' | wc -l)
echo "lacave peak RSS: ${rss} MB (target < 100); nodes moved to installing: $state/$CLIENTS"
awk -v o="$mb_ours" -v n="$mb_nginx" 'BEGIN { printf "RESULT lacave/nginx throughput %.2fx (target >= 0.9)\n", o / n }'
