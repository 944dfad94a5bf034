#!/usr/bin/env bash
# Join benchmark (issue: cluster join). In the cluster lab (integration-tests/k8s: nodes as
# namespaces with sshd, containerd, kubelet and kubeadm v1.37.2 built from source), a release
# lacave takes the first control plane through kubeadm init and workers through kubeadm join,
# and it prints: booted → Ready of the control plane, of one worker, of WORKERS workers booted
# at once (slowest, and its ratio to one worker), a bare `kubeadm join` run by hand on a node of
# the same lab as the baseline (ratio), and the daemon's RSS (now and peak).
# Usage (root): bench/join.sh [workers at once, default 3] [runs, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
WORKERS=${1:-3}
RUNS=${2:-2}
. scripts/prereqs.sh
ensure_k8s
cargo build --release --quiet -p lacave --bin lacave
cargo build --release --quiet -p lacave-integration-tests --bin lacave-joinbench
for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS"
    LACAVE_BIN=target/release/lacave target/release/lacave-joinbench --workers "$WORKERS"
done
