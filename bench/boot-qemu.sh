#!/usr/bin/env bash
# Power-on → booted, side by side (issue: boot flow). One QEMU machine at a time (TCG), BIOS
# (SeaBIOS + QEMU's iPXE ROM) then UEFI (OVMF's own PXE client, ipxe.efi over TFTP), installs
# the stand-in Flatcar image (integration-tests/standin) twice:
#   1. from lacave alone (its DHCP, TFTP, router advertisements, iPXE scripts, Ignition,
#      mirror, callbacks);
#   2. from a tuned dnsmasq (DHCP + TFTP + router advertisements, iPXE's no-pxedhcp option)
#      and nginx serving the very scripts and configs lacave rendered, as static files, with
#      the callbacks answered 204.
# "Booted" is the moment the installed system's booted callback arrives. Prints each time and
# the lacave/stack ratios (lower is better; target <= 1.0).
# EFI_FILE=snponly.efi gives UEFI machines iPXE's SNP-only build (it drives the NIC through
# the firmware's own network stack; 174 KB instead of ipxe.efi's 1 MB) from both servers.
# Usage (root): bench/boot-qemu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
. scripts/prereqs.sh
require_root
require_tools qemu-system-x86_64 dnsmasq nginx curl "sudo scripts/test installs QEMU, OVMF, dnsmasq-base and nginx-light"
ensure_standin
cargo build --release --quiet -p lacave --bin lacave
bench_setup qemu
S=10.70.0.1
ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr add $S/24 dev br0
ip -n "$ns" addr add fd70::1/64 dev br0 nodad   # a ULA for dnsmasq's RAs, inside the namespace
ip -n "$ns" link set br0 up
ip -n "$ns" tuntap add dev tap0 mode tap
ip -n "$ns" link set tap0 master br0
ip -n "$ns" link set tap0 up

mirror="$work/mirror/stable/amd64-usr"
mkdir -p "$mirror/4081.2.0"
cp target/standin/flatcar_production_pxe.vmlinuz target/standin/flatcar_production_pxe_image.cpio.gz "$mirror/4081.2.0/"
printf 'FLATCAR_VERSION=4081.2.0\nFLATCAR_VERSION_ID=4081.2.0\n' > "$mirror/4081.2.0/version.txt"
head -c 1048576 /dev/zero > "$mirror/4081.2.0/flatcar_production_image.bin.bz2"
ln -s 4081.2.0 "$mirror/current"
BIOS_MAC=52:54:00:70:00:01 UEFI_MAC=52:54:00:70:00:02
# The first run must not pay for a cold page cache: warm QEMU, its ROMs and the firmware.
cat "$(command -v qemu-system-x86_64)" /usr/share/qemu/* /usr/lib/ipxe/qemu/* /usr/share/OVMF/OVMF_CODE_4M.fd \
    /usr/lib/ipxe/* >/dev/null 2>&1 || true
qemu-system-x86_64 -accel tcg -display none -monitor none -serial none -nodefaults -S -daemonize \
    -pidfile "$work/warm.pid" >/dev/null 2>&1 && kill "$(cat "$work/warm.pid")" 2>/dev/null || true

qemu() { # mac uefi(0/1) -> starts the machine, sets $qemu_pid
    local extra=()
    if [ "$2" = 1 ]; then
        cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
        extra=(-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
               -drive "if=pflash,format=raw,file=$work/vars.fd"
               -device "virtio-net-pci,netdev=n0,mac=$1,romfile=,bootindex=1")
    else
        extra=(-device "virtio-net-pci,netdev=n0,mac=$1,bootindex=1")
    fi
    ip netns exec "$ns" qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -no-reboot -display none \
        -monitor none -serial "file:$work/serial.log" \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no "${extra[@]}" &
    qemu_pid=$!
}

wait_booted() { # check-command -> prints seconds from now until it succeeds
    local start now
    start=$(date +%s.%N)
    for _ in $(seq 1500); do
        if "$@"; then
            now=$(date +%s.%N)
            awk -v s="$start" -v e="$now" 'BEGIN { printf "%.1f", e - s }'
            return
        fi
        sleep 0.2
    done
    echo "timeout"
}

# --- 1. lacave
cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
server_ip = "$S"
[http]
listen = "$S:8080"
mirror_listen = "$S:8081"
[tftp]
listen = "$S:69"
[dhcp]
mode = "full"
interface = "br0"
subnet = "10.70.0.0/24"
efi_file = "${EFI_FILE:-ipxe.efi}"
[flatcar]
mirror_dir = "$work/mirror"
kernel_args = ["console=ttyS0,115200n8"]
TOML
LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" 2>"$work/lacave.log" &
lacave_pid=$!
pids+=("$lacave_pid")
for _ in $(seq 50); do [ -f "$work/state/api-token" ] && break; sleep 0.1; done
sleep 0.5
token=$(cat "$work/state/api-token")
api() { in_ns curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "$@"; }
api -d "{\"mac\":\"$BIOS_MAC\",\"hostname\":\"kube-bios\",\"ip\":\"10.70.0.11\",\"role\":\"worker\"}" http://$S:8080/api/v1/nodes >/dev/null
api -d "{\"mac\":\"$UEFI_MAC\",\"hostname\":\"kube-uefi\",\"ip\":\"10.70.0.12\",\"role\":\"worker\"}" http://$S:8080/api/v1/nodes >/dev/null
# What a static stack will serve: lacave's own renderings, taken before the installs start.
static="$work/static"
mkdir -p "$static/ipxe" "$static/ignition"
in_ns curl -sf -o "$static/boot.ipxe" http://$S:8080/boot.ipxe
for n in "kube-bios $BIOS_MAC" "kube-uefi $UEFI_MAC"; do
    set -- $n
    seg=${2//:/-}
    api -o "$static/ipxe/$seg" "http://$S:8080/api/v1/nodes/$1/render/ipxe"
    mkdir -p "$static/ignition/$seg"
    api -o "$static/ignition/$seg/install" "http://$S:8080/api/v1/nodes/$1/render/install"
    api -o "$static/ignition/$seg/final" "http://$S:8080/api/v1/nodes/$1/render/final"
done
ln -s "$work/mirror" "$static/mirror"

state_of() { api "http://$S:8080/api/v1/nodes/$1" | grep -q '"state":"booted"'; }
run_lacave() {
LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" 2>>"$work/lacave.log" &
lacave_pid=$!
pids+=("$lacave_pid")
sleep 1
qemu $BIOS_MAC 0; t_l_bios=$(wait_booted state_of kube-bios); kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true
qemu $UEFI_MAC 1; t_l_uefi=$(wait_booted state_of kube-uefi); kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true
kill "$lacave_pid"; wait "$lacave_pid" 2>/dev/null || true
echo "lacave:          BIOS ${t_l_bios} s, UEFI ${t_l_uefi} s"
}

run_stack() {
cat > "$work/nginx.conf" <<NGINX
user root;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    log_format t '\$msec \$request_uri';
    access_log $work/access.log t;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {
        listen $S:8080;
        listen $S:8081;
        root $static;
        location /callback/ { return 204; }
    }
}
NGINX
ip netns exec "$ns" nginx -c "$work/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
pids+=($!)
ip netns exec "$ns" dnsmasq -d -k --conf-file=/dev/null --port=0 --interface=br0 --bind-interfaces \
    --dhcp-range=10.70.0.100,10.70.0.200,255.255.255.0,1h --dhcp-authoritative --no-ping \
    --dhcp-host=$BIOS_MAC,10.70.0.11 --dhcp-host=$UEFI_MAC,10.70.0.12 \
    --dhcp-leasefile="$work/dnsmasq.leases" --enable-tftp --tftp-root=/usr/lib/ipxe \
    --dhcp-match=set:ipxe,175 --dhcp-match=set:efi,option:client-arch,7 \
    --dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe --dhcp-boot=tag:!ipxe,tag:efi,${EFI_FILE:-ipxe.efi} \
    --dhcp-boot=tag:ipxe,http://$S:8080/boot.ipxe --dhcp-option=tag:ipxe,encap:175,176,1 \
    --enable-ra --dhcp-range=::,constructor:br0,ra-only \
    --pid-file="$work/dnsmasq.pid" --log-facility="$work/dnsmasq.log" 2>/dev/null &
dnsmasq_pid=$!
pids+=($!)
sleep 1
called_back() { grep -q "/callback/$1/booted" "$work/access.log" 2>/dev/null; }
qemu $BIOS_MAC 0; t_s_bios=$(wait_booted called_back "${BIOS_MAC//:/-}"); kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true
qemu $UEFI_MAC 1; t_s_uefi=$(wait_booted called_back "${UEFI_MAC//:/-}"); kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true
echo "dnsmasq + nginx: BIOS ${t_s_bios} s, UEFI ${t_s_uefi} s"
# The stack's iPXE goes through the generic boot.ipxe, which puts the machine's own script in
# its place (chain --replace): what lacave's DHCP saves by handing that script's URL at once.
for mac in $BIOS_MAC $UEFI_MAC; do
    awk -v seg="/ipxe/${mac//:/-}" '$2 == "/boot.ipxe" && !m { b = $1 } $2 == seg && b && !m { m = $1 }
        END { if (b && m) printf "  %s: boot.ipxe to its own script %.0f ms\n", seg, (m - b) * 1000; else print "  " seg ": boot.ipxe not followed by its own script" }' "$work/access.log"
done
kill "$nginx_pid" "$dnsmasq_pid" 2>/dev/null || true
wait "$nginx_pid" "$dnsmasq_pid" 2>/dev/null || true
}

# Both orders cost the same here, but the first QEMU runs of a session can be slower: ORDER
# picks which stack goes first (default: the dnsmasq + nginx stack).
kill "$lacave_pid"; wait "$lacave_pid" 2>/dev/null || true
if [ "${ORDER:-stack-first}" = lacave-first ]; then run_lacave; run_stack; else run_stack; run_lacave; fi
awk -v lb="$t_l_bios" -v lu="$t_l_uefi" -v sb="$t_s_bios" -v su="$t_s_uefi" \
    'BEGIN { printf "RESULT lacave/stack power-on to booted: BIOS %.2fx, UEFI %.2fx (target <= 1.0); PXE-LAB.md: 10.2 s BIOS, 18.7 s UEFI with a lighter stand-in\n", lb / sb, lu / su }'
