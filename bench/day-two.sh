#!/usr/bin/env bash
# Day-two figures of the cluster lab (issue #26): an etcd snapshot of a running cluster, its
# restore onto the first control plane (and every node Ready again), and the renewal of two
# control planes' certificates with the longest time no API server was ready. They come from
# tests/cluster.rs (real kubeadm, etcd, etcdutl, kubelets and API servers built from source;
# two control planes and workers on 2 cores here), which measures them as it checks them;
# this prints them. The snapshot's speed against etcdctl is bench/etcd-snapshot.sh, the
# upgrade's bench/upgrade.sh.
# Usage (root): bench/day-two.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo build -q -p lacave
cargo test -q -p lacave-integration-tests --test cluster -- --nocapture >"$log" 2>&1 \
    || { tail -50 "$log"; echo "the cluster test failed" >&2; exit 1; }
echo "cluster lab, $(nproc) cores:"
grep -E '^(etcd snapshot etcd-|etcd restored onto|restore to every node|certificates of two control planes|API during the renewal)' "$log" \
    | sed 's/^/  /'
