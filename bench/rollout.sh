#!/usr/bin/env bash
# Flatcar update rollout benchmark (issue #29): how long the daemon takes to reboot a control
# plane and two workers into an applied update, one node at a time (cordon, drain, reboot over
# SSH, back Ready and reporting the new release to the Omaha endpoint, uncordon), in the
# cluster lab (real kubelets, API server and etcd; a node's reboot is its services restarting
# with a 3 s pause, k8s/systemctl). Runs tests/updates_reboots.rs with every node coming back.
# No peer runs here (the Flatcar Linux Update Operator needs real Flatcar hosts), so there is
# no ratio. Usage (root): bench/rollout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
. scripts/prereqs.sh
require_root
ensure_omaha_client
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo build -q -p lacave
LACAVE_ROLLOUT_BENCH=1 cargo test -q -p lacave-integration-tests --test updates_reboots -- \
    --nocapture >"$log" 2>&1 || { tail -50 "$log"; echo "the rollout test failed" >&2; exit 1; }
echo "rollout of an applied Flatcar update through cp1, w1 and w2, $(nproc) cores:"
grep -E '^(cp1|w[0-9]): cordoned|^rollout of' "$log" | sed 's/^/  /'
