#!/usr/bin/env bash
# DHCP benchmark (issue: network boot services). Two network namespaces joined by veth: the
# server side (10.68.0.1/16) and perfdhcp (10.68.0.2/16, as a relay agent, one new client MAC
# per exchange). Kea (memfile, persisted), dnsmasq (no-ping) and lacave (full mode, leases and
# discovered machines durable before each reply) each get the same perfdhcp runs at increasing
# offered rates; printed: achieved DORA exchanges/s and drop ratios, and the highest rate each
# sustains with drops under 1 %.
# Usage (root): bench/dhcp.sh [seconds per rate, default 8] [rates, default "1000 2500 5000 7500 10000"]
# SERVERS="kea lacave" picks servers and their order; LACAVE_BIN=path runs another build; NOISE=1 keeps a busy loop running on the
# host throughout (a machine that is doing something else too). Keep seconds x rate under
# 64,000: the pool has 64,000 addresses and clients beyond them get no offer from any server.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
PERIOD=${1:-8}
RATES=${2:-"1000 2500 5000 7500 10000"}
require_tools perfdhcp kea-dhcp4 dnsmasq "sudo scripts/test installs kea-dhcp4-server, kea-admin (perfdhcp) and dnsmasq-base"
# LACAVE_BIN: another build to compare (e.g. one from an earlier commit).
if [ -z "${LACAVE_BIN:-}" ]; then
    cargo build --release --quiet -p lacave --bin lacave
    LACAVE_BIN=target/release/lacave
fi
bench_setup dhcp
client_netns bds0 bdc0 10.68.0.1/16 10.68.0.2/16

start_kea() {
    mkdir -p "$work/kea"
    cat > "$work/kea/kea.json" <<JSON
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["bds0"], "dhcp-socket-type": "udp"},
  "lease-database": {"type": "memfile", "persist": true, "name": "$work/kea/leases4.csv", "lfc-interval": 0},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.68.0.0/16", "pools": [{"pool": "10.68.1.0 - 10.68.250.254"}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "$work/kea/kea.log"}], "severity": "WARN"}]
}}
JSON
    KEA_PIDFILE_DIR="$work/kea" KEA_LOCKFILE_DIR="$work/kea" ip netns exec "$ns" kea-dhcp4 -c "$work/kea/kea.json" >/dev/null 2>&1 &
    server_pid=$!
}
start_dnsmasq() {
    ip netns exec "$ns" dnsmasq -d -k --conf-file=/dev/null --port=0 --interface=bds0 --bind-interfaces \
        --dhcp-range=10.68.1.0,10.68.250.254,255.255.0.0,1h --dhcp-leasefile="$work/dnsmasq.leases" \
        --no-ping --dhcp-authoritative --dhcp-lease-max=1000000 --pid-file="$work/dnsmasq.pid" --quiet-dhcp --log-facility=/dev/null 2>/dev/null &
    server_pid=$!
}
start_lacave() {
    rm -rf "$work/state"
    cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
server_ip = "10.68.0.1"
[http]
listen = "10.68.0.1:8080"
[dhcp]
mode = "full"
interface = "bds0"
subnet = "10.68.0.0/16"
pool = "10.68.1.0-10.68.250.254"
unknown_clients = "discover"
TOML
    LACAVE_LOG=warn ip netns exec "$ns" "$LACAVE_BIN" serve --config "$work/lacave.toml" 2>"$work/lacave.log" &
    server_pid=$!
}

# Equal work: how many leases the server recorded on disk (each should be one ACK perfdhcp got).
leases_recorded() { # server
    case $1 in
    kea) awk -F, 'NR > 1 { print $1 }' "$work/kea/leases4.csv" 2>/dev/null | sort -u | wc -l ;;
    dnsmasq) wc -l < "$work/dnsmasq.leases" 2>/dev/null || echo 0 ;;
    lacave) ip netns exec "$ns" curl -fsS -H "Authorization: Bearer $(cat "$work/state/api-token")" \
            http://10.68.0.1:8080/api/v1/backup |
            python3 -c 'import json, sys; print(len(json.load(sys.stdin)["trees"]["leases"]))' ;;
    esac
}

# Datagrams the kernel dropped because a socket's receive buffer was full, in a namespace: on
# perfdhcp's side an ACK the server sent but perfdhcp never read (counted in its drops).
rcvbuf_errors() { # namespace
    ip netns exec "$1" awk '/^Udp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i } else { print $c; exit } }' /proc/net/snmp
}

cpu_ticks() { # pid: user + system clock ticks of the process and its threads so far
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

if [ "${NOISE:-0}" = 1 ]; then
    sh -c 'while :; do :; done' &
    pids+=($!)
fi

declare -A best
for server in ${SERVERS:-kea dnsmasq lacave}; do
    best[$server]=0
    for rate in $RATES; do
        rm -rf "$work/kea" "$work/dnsmasq.leases"
        "start_$server"
        sleep 1.5
        cpu0=$(cpu_ticks "$server_pid")
        full0=$(rcvbuf_errors "$cli") sfull0=$(rcvbuf_errors "$ns")
        out=$(ip netns exec "$cli" perfdhcp -4 -l 10.68.0.2 -r "$rate" -R 1000000 -p "$PERIOD" -W 200000 10.68.0.1 2>&1 || true)
        cpu1=$(cpu_ticks "$server_pid")
        full=$(($(rcvbuf_errors "$cli") - full0)) sfull=$(($(rcvbuf_errors "$ns") - sfull0))
        # dnsmasq writes its lease file on its own schedule: a moment to catch up.
        sleep 0.5
        recorded=$(leases_recorded "$server")
        acks=$(echo "$out" | awk '/^\*\*\*Statistics for: REQUEST-ACK/ { f = 1 } f && /received packets:/ { print $3; exit }')
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        # Completed exchanges (ACKs received, those still in flight when perfdhcp stopped
        # sending included: -W waits 0.2 s for them) per second of sending. perfdhcp's own
        # "Rate:" divides by the run's whole length, the wait included.
        achieved=$(awk -v n="${acks:-0}" -v p="$PERIOD" 'BEGIN { printf "%.1f", n / p }')
        drops=$(echo "$out" | awk '/drops ratio:/ {gsub("%", "", $3); print $3}' | paste -sd' ')
        worst=$(echo "$drops" | tr ' ' '\n' | sort -g | tail -1)
        # The server's own CPU time (all threads) per 1,000 exchanges: headroom that does not
        # depend on how busy the machine is.
        cpu=$(awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v a="${achieved:-0}" -v p="$PERIOD" \
            'BEGIN { if (a > 0) printf "%.0f", t / hz * 1000 / (a * p / 1000); else print "n/a" }')
        printf '%-8s offered %6s/s  achieved %8.1f exchanges/s  drops %% (DO, RA): %-22s CPU %s ms/1000  leases recorded %s (ACKs %s)  full-buffer drops perfdhcp/server %s/%s\n' "$server" "$rate" "${achieved:-0}" "$drops" "$cpu" "$recorded" "${acks:-?}" "$full" "$sfull" >&2
        if awk -v w="${worst:-100}" -v a="${achieved:-0}" -v b="${best[$server]:-0}" 'BEGIN { exit !(w < 1.0 && a > b) }'; then
            best[$server]=$achieved
        fi
    done
done
echo "highest sustained with drops < 1 %: Kea ${best[kea]:-0}/s, dnsmasq ${best[dnsmasq]:-0}/s, lacave ${best[lacave]:-0}/s"
awk -v o="${best[lacave]:-0}" -v k="${best[kea]:-0}" -v d="${best[dnsmasq]:-0}" 'BEGIN {
    printf "RESULT lacave/Kea %s, lacave/dnsmasq %s (target >= 1.0x Kea)\n",
        (k > 0 ? sprintf("%.2fx", o / k) : "n/a (Kea sustained none of the rates)"),
        (d > 0 ? sprintf("%.2fx", o / d) : "n/a (dnsmasq sustained none of the rates)")
}'
