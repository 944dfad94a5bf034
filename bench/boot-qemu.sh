#!/usr/bin/env bash
# Power-on → booted for a BIOS and a UEFI QEMU machine (TCG), one at a time, installing the
# stand-in Flatcar image from lacave alone (DHCP, TFTP, HTTP): the QEMU end-to-end test run
# sequentially. Compared with PXE-LAB.md's figures for a tuned dnsmasq + static HTTP stack
# booting a lighter stand-in (10.2 s BIOS, 18.7 s UEFI).
# Usage (root): bench/boot-qemu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prereqs.sh
[ "$(id -u)" = 0 ] || { echo "$0: run as root (network namespaces, QEMU taps)" >&2; exit 1; }
ensure_standin
line=$(LACAVE_QEMU_SEQUENTIAL=1 cargo test --quiet -p lacave-integration-tests --test qemu -- --nocapture 2>/dev/null | grep 'power-on')
echo "$line"
bios=$(echo "$line" | sed -n 's/.*BIOS \([0-9.]*\) s.*/\1/p')
uefi=$(echo "$line" | sed -n 's/.*UEFI \([0-9.]*\) s.*/\1/p')
awk -v b="$bios" -v u="$uefi" 'BEGIN { printf "RESULT vs PXE-LAB tuned stack: BIOS %.2fx (%.1f/10.2 s), UEFI %.2fx (%.1f/18.7 s) (target <= 1.0)\n", b / 10.2, b, u / 18.7, u }'
