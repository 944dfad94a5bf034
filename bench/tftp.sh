#!/usr/bin/env bash
# TFTP benchmark (issue: network boot services). In a network namespace it creates and removes,
# CLIENTS concurrent tftp-hpa clients fetch ipxe.efi (850 KB, blksize 512 as firmware does),
# first from tftpd-hpa, then from lacave, both serving the same directory. Prints the time for
# all transfers to finish, checks every copy, and the lacave/tftpd-hpa ratio (lower is better).
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

ip netns exec "$ns" in.tftpd -L -s "$work/root" -a 10.69.0.2:69 &
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
LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" 2>"$work/lacave.log" &
pids+=($!)
sleep 1

run() { # name address
    local dir="$work/out-$1" start end
    mkdir -p "$dir"
    start=$(date +%s.%N)
    for i in $(seq 1 "$CLIENTS"); do
        ip netns exec "$ns" tftp "$2" -m binary -c get ipxe.efi "$dir/$i" &
    done
    wait $(jobs -p | grep -v -e "${pids[0]}" -e "${pids[1]}") 2>/dev/null || true
    end=$(date +%s.%N)
    local ok
    ok=$(find "$dir" -type f -size "${size}c" | wc -l)
    local t
    t=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }')
    printf '%-10s %s clients: all done in %s s, %s/%s copies complete\n' "$1" "$CLIENTS" "$t" "$ok" "$CLIENTS" >&2
    echo "$t"
}
echo "ipxe.efi: $size bytes; $CLIENTS concurrent tftp-hpa clients; $(nproc) cores"
t_hpa=$(run tftpd-hpa 10.69.0.2)
t_ours=$(run lacave 10.69.0.1)
awk -v o="$t_ours" -v h="$t_hpa" 'BEGIN { printf "RESULT lacave/tftpd-hpa time %.2fx (target <= 1.0)\n", o / h }'
