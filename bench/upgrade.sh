#!/usr/bin/env bash
# Kubernetes upgrade benchmark (issue #26): how long the daemon takes to upgrade a control plane
# and WORKERS workers (default 2) from $K8S_UPGRADE_FROM (v1.36.3) to v1.37.2, one node at a
# time, in the cluster lab (real kubeadm, kubelets, etcd and API servers built from source;
# tests/upgrade.rs, which also stops the run at a broken cp1 and SIGKILLs the daemon during
# the first worker). Prints each node's time as its history records it (drain, sysext,
# kubeadm, kubelet restart, Ready at the new version, uncordon; the first worker's from the
# restarted daemon's resume) and their sum. No peer runs here to compare with (kubespray's
# upgrade-cluster.yml needs Ansible against real hosts), so there is no ratio.
# Usage (root): bench/upgrade.sh [WORKERS, 1 to 4]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
WORKERS=${1:-2}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo build -q -p lacave
LACAVE_UPGRADE_WORKERS=$WORKERS cargo test -q -p lacave-integration-tests --test upgrade -- \
    --nocapture >"$log" 2>&1 || { tail -50 "$log"; echo "the upgrade test failed" >&2; exit 1; }
echo "upgrade v1.36.3 → v1.37.2 of cp1 and $WORKERS worker(s), $(nproc) cores:"
grep -E '^(cp1|w[0-9]): upgraded to' "$log" | sed 's/^/  /'
grep -E '^(cp1|w[0-9]): upgraded to' "$log" \
    | sed -E 's/.* in ([0-9]+) s.*/\1/' | awk '{s+=$1} END {printf "  sum of the nodes: %d s\n", s}'
grep -E '^upgrade of ' "$log" | sed 's/^/  wall clock, /'
