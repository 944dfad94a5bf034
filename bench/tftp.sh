#!/usr/bin/env bash
# TFTP benchmark (issue: network boot services). In a network namespace it creates and removes,
# CLIENTS concurrent tftp-hpa clients fetch ipxe.efi (850 KB, blksize 512 as firmware does),
# from tftpd-hpa and from lacave, both serving the same directory, twice each in alternating
# order. Checks every copy byte for byte (sha256) before comparing; prints each run's time for
# all transfers to finish and the server's CPU time per transfer (each server in a cgroup of
# its own, so tftpd-hpa's forked children count), the best of two of each, and the lacave/tftpd-hpa ratios (lower is better).
# Usage (root): bench/tftp.sh [clients, default 200]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
CLIENTS=${1:-200}
require_tools tftp in.tftpd "sudo scripts/test installs tftp-hpa and tftpd-hpa"
cargo build --release --quiet -p lacave --bin lacave
bench_setup tftp
ip -n "$ns" addr add 10.69.0.1/32 dev lo
ip -n "$ns" addr add 10.69.0.2/32 dev lo
mkdir -p "$work/root"
cp -L /usr/lib/ipxe/ipxe.efi "$work/root/ipxe.efi"
size=$(stat -c %s "$work/root/ipxe.efi")

trap 'bench_cleanup; cpu_group_cleanup' EXIT
hpa_group=$(cpu_group_new tftpd-hpa)
lacave_group=$(cpu_group_new lacave)
# The clients' own CPU: with 2 cores shared, what they use bounds how fast any server can be.
client_group=$(cpu_group_new clients)
sh -c "$CPU_GROUP_EXEC" "$hpa_group" ip netns exec "$ns" in.tftpd -L -s "$work/root" -a 10.69.0.2:69 &
pids+=($!)
cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
server_ip = "10.69.0.1"
[http]
listen = "10.69.0.1:8080"
[tftp]
listen = "10.69.0.1:69"
root = "$work/root"
# Every benchmark client shares one address: lift the per-client share (default 8) so that
# all of them run at once, as they would from as many machines.
max_transfers_per_client = 1000
TOML
LACAVE_LOG=warn sh -c "$CPU_GROUP_EXEC" "$lacave_group" ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" 2>"$work/lacave.log" &
pids+=($!)
sleep 1

sum=$(sha256sum < "$work/root/ipxe.efi" | cut -d' ' -f1)
run() { # name address cpu-group
    local dir="$work/out-$1-$RANDOM" start end cpu0 cpu1 ccpu0 ccpu1
    mkdir -p "$dir"
    cpu0=$(cpu_group_usage_us "$3")
    ccpu0=$(cpu_group_usage_us "$client_group")
    start=$(date +%s.%N)
    local clients=()
    for i in $(seq 1 "$CLIENTS"); do
        sh -c "$CPU_GROUP_EXEC" "$client_group" ip netns exec "$ns" tftp "$2" -m binary -c get ipxe.efi "$dir/$i" &
        clients+=($!)
    done
    wait "${clients[@]}" 2>/dev/null || true
    end=$(date +%s.%N)
    cpu1=$(cpu_group_usage_us "$3")
    ccpu1=$(cpu_group_usage_us "$client_group")
    # Equal work: every copy is the file, byte for byte.
    local ok
    ok=$(cd "$dir" && sha256sum -- * | awk -v s="$sum" '$1 == s' | wc -l)
    local t
    t=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }')
    local cpu
    cpu=$(awk -v t=$((cpu1 - cpu0)) -v n="$CLIENTS" 'BEGIN { printf "%.2f", t / 1000 / n }')
    local floor
    floor=$(awk -v c=$((ccpu1 - ccpu0)) -v n="$(nproc)" 'BEGIN { printf "%.2f", c / 1e6 / n }')
    printf '%-10s %s clients: all done in %s s, %s/%s copies identical to the file, server CPU %s ms/transfer; the clients used %s s of CPU (alone on %s cores: %s s at the least)\n' "$1" "$CLIENTS" "$t" "$ok" "$CLIENTS" "$cpu" "$(awk -v c=$((ccpu1 - ccpu0)) 'BEGIN { printf "%.2f", c / 1e6 }')" "$(nproc)" "$floor" >&2
    [ "$ok" = "$CLIENTS" ] || { echo "$1 did not serve every copy intact: no comparison" >&2; exit 1; }
    rm -rf "$dir"
    echo "$t $cpu"
}
echo "ipxe.efi: $size bytes; $CLIENTS concurrent tftp-hpa clients; $(nproc) cores shared by servers and clients"
# Best of two, alternating order: the shortest time and the lowest CPU of each.
best() { awk '{ if (t == "" || $1 < t) t = $1; if (c == "" || $2 < c) c = $2 } END { print t, c }'; }
r1=$(run tftpd-hpa 10.69.0.2 "$hpa_group")
r2=$(run lacave 10.69.0.1 "$lacave_group")
r3=$(run lacave 10.69.0.1 "$lacave_group")
r4=$(run tftpd-hpa 10.69.0.2 "$hpa_group")
read -r t_hpa c_hpa < <(printf '%s\n%s\n' "$r1" "$r4" | best)
read -r t_ours c_ours < <(printf '%s\n%s\n' "$r2" "$r3" | best)
echo "best of two: tftpd-hpa $t_hpa s, $c_hpa ms CPU/transfer; lacave $t_ours s, $c_ours ms CPU/transfer"
awk -v o="$t_ours" -v h="$t_hpa" -v oc="$c_ours" -v hc="$c_hpa" \
    'BEGIN { printf "RESULT lacave/tftpd-hpa time %.2fx, server CPU per transfer %.2fx (lower is better)\n", o / h, (hc > 0 ? oc / hc : 0) }'
