#!/usr/bin/env bash
# Power-on through a node's BMC → booted (issue #28), with the share each phase takes: the
# daemon asks OpenIPMI's ipmi_sim (IPMI v2.0 over LAN, in a namespace) for a network boot
# and a power-on; ipmi_sim's chassis starts a QEMU machine (TCG, SeaBIOS + iPXE ROM) that
# installs the stand-in Flatcar image from the daemon alone. It runs the test
# integration-tests/tests/qemu_power.rs RUNS times and prints what each run measured.
# The baseline is bench/boot-qemu.sh's BIOS figure (the same machine powered on by hand).
# Usage (root): bench/power.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prereqs.sh
[ "$(id -u)" = 0 ] || { echo "bench/power.sh: run as root (it makes a network namespace)" >&2; exit 1; }
ensure_standin
runs=${1:-3}
cargo test --quiet --locked -p lacave-integration-tests --test qemu_power --no-run
for i in $(seq "$runs"); do
    echo "== run $i"
    cargo test --quiet --locked -p lacave-integration-tests --test qemu_power -- --nocapture 2>&1 \
        | grep -E '^(power-on|  [A-Za-z])'
done
