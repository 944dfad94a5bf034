#!/usr/bin/env bash
# Boot-storm benchmark (issue #16, item 5). Two network namespaces it creates and removes,
# joined by a veth pair: the servers' (10.71.0.1 lacave, 10.71.0.2 nginx) and the machines'
# (CLIENTS simulated machines, each its own address 10.71.1.1… and MAC, registered with them).
# All machines at once: each gets its address by DHCP (relayed from its own address: the
# address acknowledged must be the one it is registered with), then fetches boot.ipxe, its
# per-MAC script, both Ignition configs and an INITRD_MB initrd from the mirror. First the
# stack lacave replaces — dnsmasq (DHCP, a reservation per machine) and nginx (sendfile,
# the daemon's own answers for one node copied per node, the same mirror) — then lacave alone
# (DHCP in full mode, HTTP, mirror on its sendfile listener). Printed per stack: machines
# completed, failures, aggregate MB/s, p50/p99 of the DHCP exchanges, of the small requests and
# of each machine's time from its first DHCP packet to the initrd's last byte; the CPU time
# (every process of the stack, in a cgroup), peak RSS (sum over its processes) and own memory
# after the storm (anonymous pages, Pss_Anon: without the executables' mapped pages).
# Usage (root): bench/boot.sh [clients, default 100] [initrd MB, default 300]; ORDER="lacave stack"
# runs lacave first, ORDER=lacave (or stack) one of them alone.
# The 500-machine storm: bench/boot.sh 500 30
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
CLIENTS=${1:-100}
INITRD_MB=${2:-300}
require_tools nginx dnsmasq curl "sudo scripts/test installs nginx-light and dnsmasq-base"
[ "$CLIENTS" -le 2500 ] || { echo "at most 2,500 clients (10.71.1.1 to 10.71.10.196)" >&2; exit 1; }
cargo build --release --quiet -p lacave --bin lacave -p lacave-integration-tests --bin lacave-bootstorm
bench_setup boot
client_netns bts0 btc0 10.71.0.1/16 10.71.0.3/16
ip -n "$ns" addr add 10.71.0.2/16 dev bts0
trap 'bench_cleanup; ip netns del "$cli" 2>/dev/null || true; cpu_group_cleanup' EXIT
machine_ip() { local h=$((257 + $1)); echo "10.71.$((h / 256)).$((h % 256))"; } # 10.71.1.1 + i, as the generator counts
machine_mac() { printf '52:54:00:71:%02x:%02x' $(($1 >> 8)) $(($1 & 255)); }
for i in $(seq 0 $((CLIENTS - 1))); do
    ip -n "$cli" addr add "$(machine_ip "$i")/16" dev btc0
done
mirror="$work/mirror/stable/amd64-usr/current"
mkdir -p "$mirror"
head -c "$((INITRD_MB * 1024 * 1024))" /dev/urandom > "$mirror/flatcar_production_pxe_image.cpio.gz"
initrd=mirror/stable/amd64-usr/current/flatcar_production_pxe_image.cpio.gz

config() { # with DHCP or not
    cat <<TOML
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
    [ "$1" = dhcp ] && cat <<TOML
[dhcp]
mode = "full"
interface = "bts0"
subnet = "10.71.0.0/16"
pool = "10.71.200.1-10.71.250.254"
TOML
    return 0
}
start_lacave() { # dhcp|nodhcp [cgroup]: sets $lacave_pid
    config "$1" > "$work/lacave-$1.toml"
    if [ -n "${2:-}" ]; then
        LACAVE_LOG=warn sh -c "$CPU_GROUP_EXEC" "$2" ip netns exec "$ns" target/release/lacave serve --config "$work/lacave-$1.toml" 2>>"$work/lacave.log" &
    else
        LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave-$1.toml" 2>>"$work/lacave.log" &
    fi
    lacave_pid=$!
    pids+=("$lacave_pid")
    for _ in $(seq 100); do
        in_ns curl -fsS -o /dev/null http://10.71.0.1:8080/healthz 2>/dev/null && return 0
        sleep 0.1
    done
    echo "lacave did not start: $(tail -5 "$work/lacave.log")" >&2
    exit 1
}
stop() { kill "$@" 2>/dev/null || true; for p in "$@"; do wait "$p" 2>/dev/null || true; done; }

# Registration, and the samples nginx serves, from a daemon without DHCP (dnsmasq runs first).
start_lacave nodhcp
token=$(cat "$work/state/api-token")
for i in $(seq 0 $((CLIENTS - 1))); do
    in_ns curl -sf -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"mac\":\"$(machine_mac "$i")\",\"hostname\":\"storm$i\",\"ip\":\"$(machine_ip "$i")\",\"role\":\"worker\"}" \
        http://10.71.0.1:8080/api/v1/nodes
done
static="$work/static"
mkdir -p "$static/ipxe" "$static/ignition"
in_ns curl -sf -o "$static/boot.ipxe" http://10.71.0.1:8080/boot.ipxe
for what in ipxe install final; do
    in_ns curl -sf -o "$work/sample.$what" -H "Authorization: Bearer $token" \
        "http://10.71.0.1:8080/api/v1/nodes/storm0/render/$what"
done
: > "$work/dnsmasq.hosts"
for i in $(seq 0 $((CLIENTS - 1))); do
    seg=$(machine_mac "$i" | tr : -)
    cp "$work/sample.ipxe" "$static/ipxe/$seg"
    mkdir -p "$static/ignition/$seg"
    cp "$work/sample.install" "$static/ignition/$seg/install"
    cp "$work/sample.final" "$static/ignition/$seg/final"
    echo "$(machine_mac "$i"),$(machine_ip "$i")" >> "$work/dnsmasq.hosts"
done
stop "$lacave_pid"
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

storm() { # name base initrd-base: the generator's line
    ip netns exec "$cli" target/release/lacave-bootstorm --dhcp 10.71.0.1 --base "$2" --initrd-base "$3" \
        --clients "$CLIENTS" --first-ip 10.71.1.1 --initrd "$initrd"
}
peak_rss_mb() { # cgroup: the sum of its processes' peak RSS
    local sum=0 p
    for p in $(cat "$1/cgroup.procs"); do
        sum=$((sum + $(awk '/VmHWM/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    awk -v k="$sum" 'BEGIN { printf "%.1f", k / 1024 }'
}
# Peak RSS includes the pages of each executable the process has mapped (lacave's unstripped
# binary is 190 MB, dnsmasq's and nginx's a few hundred KB), which the page cache holds anyway;
# a process's own memory is its anonymous pages, shared ones split between the processes that
# share them (nginx's workers are forks of its master): Pss_Anon.
own_mb() { # cgroup: the sum of its processes' anonymous memory now
    local sum=0 p
    for p in $(cat "$1/cgroup.procs"); do
        sum=$((sum + $(awk '/^Pss_Anon:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
    done
    awk -v k="$sum" 'BEGIN { printf "%.1f", k / 1024 }'
}
report() { # name line cgroup cpu0
    local cpu
    cpu=$(( $(cpu_group_usage_us "$3") - $4 ))
    printf '%-16s %s cpu_s=%.2f peak_rss_mb=%s own_mb=%s\n' "$1" "$2" "$(awk -v u="$cpu" 'BEGIN { print u / 1e6 }')" "$(peak_rss_mb "$3")" "$(own_mb "$3")"
}
echo "$CLIENTS machines, DHCP then HTTP, initrd ${INITRD_MB} MB each; $(nproc) cores"

run_stack() { # dnsmasq + nginx
    local stack dnsmasq_pid nginx_pid cpu0
    stack=$(cpu_group_new stack)
    sh -c "$CPU_GROUP_EXEC" "$stack" ip netns exec "$ns" dnsmasq -d -k --conf-file=/dev/null --port=0 \
        --interface=bts0 --dhcp-range=10.71.0.0,static,255.255.0.0,1h --dhcp-hostsfile="$work/dnsmasq.hosts" \
        --dhcp-boot=undionly.kpxe --dhcp-authoritative --dhcp-leasefile="$work/dnsmasq.leases" \
        --pid-file="$work/dnsmasq.pid" --quiet-dhcp --log-facility=/dev/null 2>/dev/null &
    dnsmasq_pid=$!
    sh -c "$CPU_GROUP_EXEC" "$stack" ip netns exec "$ns" nginx -c "$work/nginx.conf" -g 'daemon off;' &
    nginx_pid=$!
    pids+=("$dnsmasq_pid" "$nginx_pid")
    sleep 1
    cpu0=$(cpu_group_usage_us "$stack")
    stack_line=$(storm stack http://10.71.0.2:8080 http://10.71.0.2:8080)
    report "dnsmasq+nginx" "$stack_line" "$stack" "$cpu0"
    stop "$dnsmasq_pid" "$nginx_pid"
    rm -f "$work/dnsmasq.leases"
}
run_lacave() {
    local group cpu0
    group=$(cpu_group_new lacave)
    start_lacave dhcp "$group"
    cpu0=$(cpu_group_usage_us "$group")
    lacave_line=$(storm lacave http://10.71.0.1:8080 http://10.71.0.1:8081)
    report lacave "$lacave_line" "$group" "$cpu0"
    installing=$(in_ns curl -sf -H "Authorization: Bearer $token" http://10.71.0.1:8080/api/v1/nodes | grep -o '"state":"installing"' | wc -l)
    echo "nodes moved to installing: $installing/$CLIENTS"
    stop "$lacave_pid"
}
for who in ${ORDER:-stack lacave}; do "run_$who"; done
# ORDER may name one stack alone (a profile, a memory probe): nothing to compare then.
[ -n "${stack_line:-}" ] && [ -n "${lacave_line:-}" ] || exit 0
field() { echo "$1" | sed -n "s/.*$2=\([0-9.]*\).*/\1/p"; }
awk -v o="$(field "$lacave_line" MBps)" -v n="$(field "$stack_line" MBps)" \
    -v lp="$(field "$lacave_line" machine_p99_s)" -v sp="$(field "$stack_line" machine_p99_s)" 'BEGIN {
    printf "RESULT lacave/(dnsmasq+nginx): throughput %.2fx, p99 machine time %.2fx\n", o / n, lp / sp
}'
